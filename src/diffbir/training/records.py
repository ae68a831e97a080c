"""The list of training images, kept compact for millions of entries.

:func:`read_records` lists a source once: a folder (one ``os.scandir`` pass, which also
finds the sidecar captions ``NAME.txt`` beside ``NAME.png``), a ``.txt`` list, or a
``.csv``/``.parquet`` table with an image-path column and one or two caption columns (the
release's v2.1 layout: ``image_path``, ``llava_short``, ``llava_long``).

A :class:`RecordList` holds its strings in a few numpy arrays (UTF-8 bytes + offsets), not
one Python object per image: data-loader workers forked from the main process then share
those pages instead of copying them as reference counts change, and the list saves to and
loads from one ``.npz`` file (:meth:`RecordList.save`), which is how a run lists its data
once and reuses the list on every process and after a restart.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffbir.errors import ConfigError
from diffbir.imaging.paths import IMAGE_EXTENSIONS

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

PATH_COLUMNS = ("image_path", "path", "image", "file_name")
CAPTION_SUFFIX = ".txt"
_FORMAT = 1


@dataclass(frozen=True)
class Record:
    """One training image: its file, its (short) caption and its long caption."""

    path: Path
    prompt: str = ""
    long_prompt: str = ""


class StringColumn:
    """Strings stored as one UTF-8 byte array and int64 offsets (``offsets[i]:offsets[i+1]``)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data = np.ascontiguousarray(data, dtype=np.uint8)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringColumn:
        """A column of ``strings`` (``None`` and NaN become "")."""
        encoded = [_text(s).encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    @classmethod
    def from_arrow(cls, column) -> StringColumn:
        """A column from a pyarrow (chunked) array of strings, without a Python string each."""
        import pyarrow as pa
        import pyarrow.compute as pc

        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        array = pc.fill_null(array.cast(pa.large_string()), "")
        _, offsets, data = array.buffers()
        offsets = np.frombuffer(offsets, dtype=np.int64)[
            array.offset : array.offset + len(array) + 1
        ]
        raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        return cls(raw[offsets[0] : offsets[-1]], offsets - offsets[0])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.data[start:end].tobytes().decode("utf-8")


def _text(value) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None, NaN
        return ""
    return str(value)


class RecordList:
    """The images of a training source, their captions, and where relative paths start.

    ``captions`` / ``long_captions``: None when the source has none. ``sidecar``: per
    image, whether ``NAME.txt`` beside it holds its caption (read when the image is used).
    """

    def __init__(
        self,
        source: str,
        base: Path,
        paths: StringColumn,
        captions: StringColumn | None = None,
        long_captions: StringColumn | None = None,
        sidecar: np.ndarray | None = None,
    ):
        self.source, self.base, self.paths = str(source), Path(base), paths
        self.captions, self.long_captions = captions, long_captions
        self.sidecar = None if sidecar is None else np.asarray(sidecar, dtype=bool)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        """The image file of record ``index`` (relative entries joined to the list's folder)."""
        path = Path(self.paths[index]).expanduser()
        return path if path.is_absolute() else self.base / path

    def caption(self, index: int) -> str:
        """The (short) caption of record ``index``: the table's, or the sidecar file's."""
        if self.captions is not None:
            return self.captions[index]
        if self.sidecar is not None and self.sidecar[index]:
            try:
                return self.path(index).with_suffix(CAPTION_SUFFIX).read_text("utf-8").strip()
            except (OSError, UnicodeDecodeError):
                return ""
        return ""

    def long_caption(self, index: int) -> str:
        """The long caption of record ``index`` ("" when the source has none)."""
        return "" if self.long_captions is None else self.long_captions[index]

    def __getitem__(self, index: int) -> Record:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return Record(self.path(index), self.caption(index), self.long_caption(index))

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the list to one ``.npz`` file (read back with :meth:`load`)."""
        arrays = {
            "format": np.array(_FORMAT),
            "source": np.array(self.source),
            "base": np.array(str(self.base)),
            "paths_data": self.paths.data,
            "paths_offsets": self.paths.offsets,
        }
        for name, column in (("captions", self.captions), ("long", self.long_captions)):
            if column is not None:
                arrays[f"{name}_data"], arrays[f"{name}_offsets"] = column.data, column.offsets
        if self.sidecar is not None:
            arrays["sidecar"] = self.sidecar
        tmp = Path(path).with_name(Path(path).name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RecordList:
        """A list written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            if int(f["format"]) != _FORMAT:
                raise ConfigError(f"{path}: a data list of another format; delete it to relist")

            def column(name: str) -> StringColumn | None:
                if f"{name}_data" not in f:
                    return None
                return StringColumn(f[f"{name}_data"], f[f"{name}_offsets"])

            return cls(
                str(f["source"]),
                Path(str(f["base"])),
                column("paths"),
                column("captions"),
                column("long"),
                f["sidecar"] if "sidecar" in f else None,
            )


# ---------------------------------------------------------------------- sources


def read_records(
    source: str | os.PathLike[str],
    *,
    caption_column: str | None = "caption",
    long_caption_column: str | None = None,
    path_column: str | None = None,
    recursive: bool = True,
    sidecar_captions: bool = True,
) -> RecordList:
    """List the images of ``source``: a folder, a ``.txt`` list, or a ``.csv``/``.parquet`` table.

    * folder: every image file in it (sub-folders too with ``recursive``), listed in one
      ``os.scandir`` pass in sorted order; with ``sidecar_captions`` a ``NAME.txt`` beside
      ``NAME.png`` is its caption;
    * ``.txt``: one path per line (relative paths are relative to the list's folder), an
      optional caption after a TAB; blank lines and ``#`` comments are skipped;
    * ``.csv``/``.parquet``: a path column (``path_column`` or the first of
      ``image_path, path, image, file_name``), the ``caption_column`` (null: no captions)
      and the optional ``long_caption_column``.
    """
    src = Path(source)
    if src.is_dir():
        return _list_folder(src, recursive=recursive, sidecar=sidecar_captions)
    if not src.is_file():
        raise ConfigError(f"{src}: no such folder or file")
    suffix = src.suffix.lower()
    if suffix == ".txt":
        return _read_list(src)
    if suffix == ".csv":
        return _read_csv(src, path_column, caption_column, long_caption_column)
    if suffix == ".parquet":
        return _read_parquet(src, path_column, caption_column, long_caption_column)
    raise ConfigError(f"{src}: a dataset source is a folder, a .txt list, or a .csv/.parquet file")


def _list_folder(root: Path, *, recursive: bool, sidecar: bool) -> RecordList:

    paths: list[str] = []
    flags: list[bool] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        folder = root / rel if rel else root
        files, texts, subdirs = [], set(), []
        try:
            entries = list(os.scandir(folder))
        except OSError as err:
            raise ConfigError(f"{folder}: cannot list ({err.strerror or err})") from None
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
                continue
            stem, ext = os.path.splitext(entry.name)
            ext = ext.lower()
            if ext in IMAGE_EXTENSIONS:
                files.append((entry.name, stem))
            elif sidecar and ext == CAPTION_SUFFIX:
                texts.add(stem)
        for name, stem in sorted(files):
            paths.append(f"{rel}/{name}" if rel else name)
            flags.append(stem in texts)
        if recursive:
            stack.extend(f"{rel}/{d}" if rel else d for d in sorted(subdirs, reverse=True))
    if not paths:
        raise ConfigError(f"{root}: no images found (png, jpg, jpeg, webp, bmp, tif, tiff)")
    side = np.array(flags, dtype=bool) if sidecar and any(flags) else None
    return RecordList(str(root), root, StringColumn.from_strings(paths), sidecar=side)


def _read_list(src: Path) -> RecordList:
    paths, captions = [], []
    for line in src.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry, _, caption = line.partition("\t")
        paths.append(entry.strip())
        captions.append(caption.strip())
    captions_col = StringColumn.from_strings(captions) if any(captions) else None
    return RecordList(str(src), src.parent, StringColumn.from_strings(paths), captions_col)


def _pick_columns(src, columns, path_column, caption_column, long_column) -> str:
    if path_column is None:
        path_column = next((c for c in PATH_COLUMNS if c in columns), None)
        if path_column is None:
            raise ConfigError(
                f"{src}: no image path column (looked for {', '.join(PATH_COLUMNS)}); "
                f"columns are {columns}"
            )
    elif path_column not in columns:
        raise ConfigError(f"{src}: no column {path_column!r}; columns are {columns}")
    for what, name in (("caption", caption_column), ("long caption", long_column)):
        if name is not None and name not in columns:
            raise ConfigError(f"{src}: no {what} column {name!r}; columns are {columns}")
    return path_column


def _read_csv(src: Path, path_column, caption_column, long_column) -> RecordList:
    with src.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        path_column = _pick_columns(src, columns, path_column, caption_column, long_column)
        rows = [r for r in reader if _text(r.get(path_column)).strip()]
    paths = StringColumn.from_strings(r[path_column].strip() for r in rows)
    caps = StringColumn.from_strings(r[caption_column] for r in rows) if caption_column else None
    longs = StringColumn.from_strings(r[long_column] for r in rows) if long_column else None
    return RecordList(str(src), src.parent, paths, caps, longs)


def _read_parquet(src: Path, path_column, caption_column, long_column) -> RecordList:
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise ConfigError(
            f"{src}: reading .parquet needs pyarrow (pip install 'diffbir[train]')"
        ) from None
    try:
        columns = list(pq.read_schema(src).names)
        path_column = _pick_columns(src, columns, path_column, caption_column, long_column)
        wanted = [c for c in dict.fromkeys((path_column, caption_column, long_column)) if c]
        table = pq.read_table(src, columns=wanted)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file to the user
        raise ConfigError(f"{src}: cannot read this parquet file ({err})") from None
    paths = pc.utf8_trim_whitespace(pc.fill_null(table.column(path_column).cast("string"), ""))
    keep = pc.not_equal(paths, "")
    if not pc.all(keep).as_py():
        table, paths = table.filter(keep), paths.filter(keep)

    def column(name):
        return None if name is None else StringColumn.from_arrow(table.column(name).cast("string"))

    return RecordList(
        str(src),
        src.parent,
        StringColumn.from_arrow(paths),
        column(caption_column),
        column(long_column),
    )
