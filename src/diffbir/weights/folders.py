"""Captioner model folders: Hugging Face repositories fetched file by file into one folder.

A model folder (:class:`ModelFolder`, listed in :data:`MODEL_FOLDERS`) is a
captioner's model as ``transformers`` opens it with ``from_pretrained(folder,
local_files_only=True)``: several files of one Hugging Face repository at a
pinned revision, kept together under ``<weights dir or cache>/<folder>``.
:func:`resolve_folder` looks for a complete copy in ``--weights-dir`` (else
``DIFFBIR_WEIGHTS_DIR``), then in the download cache; failing that, and unless
an offline switch is set, it fetches each missing file on its own with
:func:`diffbir.weights.registry.download` (resume, lock, atomic rename), through
``DIFFBIR_MIRROR`` as ``<base>/<folder>/<file>`` when that is set. The shared
helpers of :mod:`diffbir.weights.registry` are looked up at call time, so patching them
there takes effect here too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from types import MappingProxyType

from diffbir.errors import DownloadError, WeightsNotFoundError, printable
from diffbir.weights import registry as _weights  # looked up at call time (tests patch it)
from diffbir.weights.registry import WeightFile

_HF = "https://huggingface.co"
_LLAMA2_LICENSE = (
    "Llama 2 Community License (https://huggingface.co/llava-hf/llava-1.5-7b-hf; "
    "https://ai.meta.com/llama/license/)"
)
_GIT_LICENSE = "MIT (https://huggingface.co/microsoft/git-base-coco)"


@dataclass(frozen=True)
class ModelFolder:
    """A model published as a Hugging Face repository, fetched file by file into one folder.

    The folder (``<weights dir or cache>/<folder>``) is what ``transformers``
    opens with ``from_pretrained(folder, local_files_only=True)``. It counts as
    present when every file of ``required`` is there; a download fetches
    ``required`` and ``extra``. Sizes and checksums of the single files are
    not published in a form we could pin, so only ``size`` (the repository's
    total as the Hub lists it, rounded) is known.
    """

    name: str
    repo: str
    revision: str
    required: tuple[str, ...]
    extra: tuple[str, ...]
    size: int | None
    description: str
    license_note: str = ""

    @property
    def folder(self) -> str:
        """The folder's name: the repository's name (``llava-1.5-7b-hf``)."""
        return self.repo.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        """Where the files are listed."""
        return f"{_HF}/{self.repo}/tree/{self.revision}"

    def files(self) -> tuple[WeightFile, ...]:
        """Every file to download, as registry entries (URL of the pinned revision)."""
        return tuple(
            WeightFile(
                name=path,
                url=f"{_HF}/{self.repo}/resolve/{self.revision}/{path}",
                sha256=None,
                size=None,
                description=f"{path} of {self.repo}",
                license_note=self.license_note,
            )
            for path in (*self.required, *self.extra)
        )


def _folders_registry(*entries: ModelFolder) -> Mapping[str, ModelFolder]:
    return MappingProxyType({e.name: e for e in entries})


# Sources: the repositories' file listings on the Hugging Face Hub (names and the sizes
# shown there: LLaVA's shards 4.99 + 4.96 + 4.18 GB, GIT's pytorch_model.bin 707 MB). No
# commit hash of either repository could be confirmed from here, so both follow `main`.
# Extra files are fetched but not needed to load (the tokenizer loads from tokenizer.json).
MODEL_FOLDERS: Mapping[str, ModelFolder] = _folders_registry(
    ModelFolder(
        name="llava",
        repo="llava-hf/llava-1.5-7b-hf",
        revision="main",
        required=(
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "preprocessor_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ),
        extra=("special_tokens_map.json", "added_tokens.json"),
        size=14_130_000_000,
        description="LLaVA-1.5-7B, the v2.1 release's captioner (--captioner llava)",
        license_note=_LLAMA2_LICENSE,
    ),
    ModelFolder(
        name="git",
        repo="microsoft/git-base-coco",
        revision="main",
        required=(
            "config.json",
            "pytorch_model.bin",
            "preprocessor_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ),
        extra=("generation_config.json", "special_tokens_map.json", "vocab.txt"),
        size=708_000_000,
        description="GIT-base fine-tuned on COCO, the light captioner (--captioner git)",
        license_note=_GIT_LICENSE,
    ),
)


def missing_in_folder(entry: ModelFolder, folder: str | PathLike) -> list[str]:
    """The required files of ``entry`` that ``folder`` lacks (all of them if it does not exist)."""
    root = Path(folder)
    return [path for path in entry.required if not (root / path).is_file()]


def find_local_folder(
    entry: ModelFolder,
    *,
    weights_dir: str | PathLike | None = None,
    cache_dir: str | PathLike | None = None,
) -> Path | None:
    """The complete local copy of ``entry`` (weights folder first, then the cache), or ``None``."""
    wdir, cdir = _weights.search_folders(weights_dir, cache_dir)
    for base in (d for d in (wdir, cdir) if d is not None):
        if not missing_in_folder(entry, base / entry.folder):
            return base / entry.folder
    return None


def resolve_folder(
    name: str,
    *,
    weights_dir: str | PathLike | None = None,
    cache_dir: str | PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    folders: Mapping[str, ModelFolder] = MODEL_FOLDERS,
) -> Path:
    """Return the local folder of the model ``name`` (a key of :data:`MODEL_FOLDERS`).

    Looks in ``weights_dir`` (else ``DIFFBIR_WEIGHTS_DIR``), then ``cache_dir``
    (else :func:`diffbir.weights.registry.default_cache_dir`), each under ``entry.folder``; else, when
    ``download`` is true and no offline switch is set, fetches every missing
    file with :func:`diffbir.weights.registry.download` (resume, lock, atomic rename) into the weights
    folder if given, else the cache. ``DIFFBIR_MIRROR=URL`` serves them as
    ``URL/<folder>/<file>``.

    Raises :class:`WeightsNotFoundError` (one line naming the folder, the
    missing files, ``diffbir download NAME`` and ``--captioner none``) when the
    model is absent and may not be downloaded, :class:`DownloadError` when a
    download fails.
    """
    entry = folders[name]
    found = find_local_folder(entry, weights_dir=weights_dir, cache_dir=cache_dir)
    if found is not None:
        return found
    wdir, cdir = _weights.search_folders(weights_dir, cache_dir)
    dest = (wdir if wdir is not None else cdir) / entry.folder
    offline = _weights.offline_from_env()
    if not download or offline is not None:
        reason = f"offline mode is on ({offline})" if offline else "downloading was not allowed"
        raise WeightsNotFoundError(missing_folder_message(entry, dest, reason))
    base = os.environ.get("DIFFBIR_MIRROR", "").strip().rstrip("/")
    for file in entry.files():
        if (dest / file.name).is_file():
            continue
        if base:
            file = replace(file, url=f"{base}/{entry.folder}/{file.name}")
        try:
            _weights.download(file, dest, progress=progress)
        except DownloadError as exc:
            raise DownloadError(
                f"{exc}. Or fetch the files of {entry.url} yourself into {printable(dest)}"
            ) from None
    return dest


def missing_folder_message(entry: ModelFolder, dest: Path, reason: str) -> str:
    """One line: which model folder and files are missing, why, and the two ways out."""
    missing = missing_in_folder(entry, dest)
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    return (
        f"the {entry.name} captioner's model ({entry.repo}) is not on this machine: "
        f"{printable(dest)} lacks {shown}, and {reason}. Run `diffbir download {entry.name}` "
        f"once online (or put the files of {entry.url} there, or in a folder passed with "
        f"--weights-dir / DIFFBIR_WEIGHTS_DIR), or use --captioner none."
    )
