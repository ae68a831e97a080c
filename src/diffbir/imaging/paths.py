"""Finding input images and naming their outputs without leaving the output folder.

:func:`collect_inputs` turns what a user typed (files, folders, glob patterns)
into an ordered, de-duplicated list of :class:`InputItem`. Each item remembers
its path relative to the folder it was found under, so outputs can mirror
sub-folders. :func:`output_path_for` maps an item into an output folder and
refuses any result that would land outside it.

Messages name paths through :func:`diffbir.errors.printable`, so a name with a
newline or an escape sequence stays on its one line.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from diffbir.errors import DiffBIRError, printable

__all__ = [
    "IMAGE_EXTENSIONS",
    "InputItem",
    "collect_inputs",
    "output_path_for",
    "output_paths_for",
]

#: Suffixes (lower case) picked up from folders and glob patterns.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
)

_GLOB_MAGIC = re.compile(r"[*?\[]")
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class InputItem:
    """One input image.

    Attributes:
        path: the file.
        relative: where it sits relative to the folder it was found under
            (just its name for a file given directly), used to mirror
            sub-folders in the output folder.
    """

    path: Path
    relative: Path


def _natural_key(relative: Path) -> tuple:
    """Sort key that puts ``img2`` before ``img10``, folder by folder."""
    key = []
    for part in relative.parts:
        pieces = _DIGITS.split(part.lower())
        key.append(tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pieces if p))
    return (tuple(key), relative.as_posix())


def _is_image(path: Path, extensions: Collection[str]) -> bool:
    return path.suffix.lower() in extensions


def _scan_folder(
    folder: Path, recursive: bool, extensions: Collection[str], problems: list | None = None
) -> list[InputItem]:
    items = []
    # os.walk without following links: a link loop cannot hang the scan.
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        for name in files:
            path = Path(root) / name
            if name.startswith(".") or not _is_image(path, extensions):
                continue
            if not path.is_file():
                if problems is not None and path.is_symlink() and not path.exists():
                    problems.append((str(path), _broken_link(path)))
                continue
            items.append(InputItem(path=path, relative=path.relative_to(folder)))
    return sorted(items, key=lambda item: _natural_key(item.relative))


def _broken_link(path: Path) -> str:
    """'<path>: broken link (to <target>)', one line."""
    try:
        target = f" (to {printable(os.readlink(path))})"
    except OSError:
        target = ""
    return f"{printable(path)}: broken link{target}, its target does not exist"


def _glob_base(pattern: str) -> Path:
    """The leading part of a pattern without wildcards: the folder matches are under."""
    parts = Path(pattern).parts
    literal = []
    for part in parts[:-1]:
        if _GLOB_MAGIC.search(part):
            break
        literal.append(part)
    return Path(*literal) if literal else Path(".")


def _scan_glob(
    pattern: str, recursive: bool, extensions: Collection[str], problems: list | None = None
) -> list[InputItem]:
    base = _glob_base(pattern)
    items = []
    # glob skips names starting with '.' for '*' and '?', like a shell does.
    for match in glob.glob(pattern, recursive=recursive):
        path = Path(match)
        if not _is_image(path, extensions):
            continue
        if not path.is_file():
            if problems is not None and path.is_symlink() and not path.exists():
                problems.append((str(path), _broken_link(path)))
            continue
        try:
            relative = path.relative_to(base)
        except ValueError:
            relative = Path(path.name)
        items.append(InputItem(path=path, relative=relative))
    return sorted(items, key=lambda item: _natural_key(item.relative))


def collect_inputs(
    sources: Sequence[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    extensions: Collection[str] = IMAGE_EXTENSIONS,
    problems: list[tuple[str, str]] | None = None,
) -> list[InputItem]:
    """List the input images named by ``sources``, in a stable order.

    Each source is a file (taken as is, whatever its suffix), a folder (its
    image files, sub-folders too when ``recursive``; hidden files and folders
    are skipped), or a glob pattern with ``*``, ``?``, ``[...]`` (and ``**``
    when ``recursive``). Sources keep the order given; within one source the
    files are in natural order (``2.png`` before ``10.png``). A file reached
    twice is listed once, at its first place.

    Args:
        problems: when given, a source that yields nothing (missing path, empty
            folder, pattern without match, broken link) and every broken link
            found in a folder or by a pattern is appended to it as
            ``(source, one-line message)``, and the other sources are still
            listed; a batch reports them and carries on.

    Raises:
        DiffBIRError: (only without ``problems``) a source matches no image.
    """
    wanted = {ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions}
    items: list[InputItem] = []
    seen: set[Path] = set()
    for source in sources:
        try:
            found = _expand(os.fspath(source), recursive, wanted, problems)
        except DiffBIRError as exc:
            if problems is None:
                raise
            problems.append((os.fspath(source), str(exc)))
            continue
        for item in found:
            key = item.path.resolve()
            if key not in seen:
                seen.add(key)
                items.append(item)
    return items


def _expand(
    source: str, recursive: bool, extensions: Collection[str], problems: list | None = None
) -> list[InputItem]:
    path = Path(source)
    shown = printable(source)
    if path.is_file():
        return [InputItem(path=path, relative=Path(path.name))]
    if path.is_dir():
        found = _scan_folder(path, recursive, extensions, problems)
        if not found:
            kinds = " ".join(sorted(extensions))
            where = " or its sub-folders" if recursive else ""
            raise DiffBIRError(f"{shown}: no image files ({kinds}) in this folder{where}")
        return found
    if path.is_symlink():
        raise DiffBIRError(_broken_link(path))
    if _GLOB_MAGIC.search(source):
        found = _scan_glob(source, recursive, extensions, problems)
        if not found:
            raise DiffBIRError(f"{shown}: no image file matches this pattern")
        return found
    raise DiffBIRError(f"{shown}: no such file or folder")


def _unsafe_reason(relative: Path) -> str | None:
    """Why ``relative`` could point outside the output folder, or None if it cannot."""
    text = str(relative)
    if not text or text == "." or "\x00" in text:
        return "empty or invalid path"
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).anchor:
        return "absolute path or drive letter"
    # Split on both separators: a '..\\' must be refused on every platform.
    parts = re.split(r"[\\/]", text)
    if any(part == ".." for part in parts):
        return "'..' component"
    return None


def output_path_for(
    item: InputItem, out_dir: str | os.PathLike[str], *, suffix: str = ".png", tag: str = ""
) -> Path:
    """The output file of ``item``: ``out_dir / item.relative`` with ``tag`` + ``suffix``.

    For example ``sub/cat.jpg`` with ``tag="_stage1"`` becomes
    ``out_dir/sub/cat_stage1.png``. The result never leaves ``out_dir``: '..'
    components, absolute paths, drive letters and links that resolve outside
    are refused.

    Raises:
        DiffBIRError: the item's relative path, the tag or the suffix would
            escape ``out_dir`` or is malformed.
    """
    out_dir = Path(out_dir)
    if not re.fullmatch(r"\.[A-Za-z0-9]+", suffix):
        raise DiffBIRError(f"output suffix must look like '.png', got {suffix!r}")
    if re.search(r"[\\/\x00]", tag) or ".." in tag:
        raise DiffBIRError(f"output tag must be a plain name fragment, got {tag!r}")
    reason = _unsafe_reason(item.relative)
    if reason:
        raise DiffBIRError(
            f"{printable(item.relative)}: refusing to write outside {printable(out_dir)} ({reason})"
        )
    relative = Path(*re.split(r"[\\/]", str(item.relative)))
    target = out_dir / relative.with_name(f"{relative.stem}{tag}{suffix}")
    root = out_dir.resolve()
    if not target.resolve().is_relative_to(root):
        raise DiffBIRError(
            f"{printable(item.relative)}: refusing to write outside {printable(out_dir)} "
            "(resolves elsewhere)"
        )
    return target


def output_paths_for(
    items: Iterable[InputItem],
    out_dir: str | os.PathLike[str],
    *,
    suffix: str = ".png",
    tag: str = "",
) -> list[Path]:
    """:func:`output_path_for` for every item, refusing two inputs that share an output.

    ``a/cat.jpg`` and ``b/cat.png`` given as files both map to ``cat.png``; this
    is caught before anything is overwritten (the check ignores letter case,
    which some file systems do).

    Raises:
        DiffBIRError: an unsafe path, or two inputs with the same output file.
    """
    outputs: list[Path] = []
    owner: dict[str, InputItem] = {}
    for item in items:
        target = output_path_for(item, out_dir, suffix=suffix, tag=tag)
        key = target.as_posix().lower()
        if key in owner:
            raise DiffBIRError(
                f"{printable(item.path)} and {printable(owner[key].path)} would both be "
                f"written to {printable(target)}"
            )
        owner[key] = item
        outputs.append(target)
    return outputs
