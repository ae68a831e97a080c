"""Training data: HQ images from a folder, a list file or a table, degraded on the fly.

:class:`PairedDataset` yields ``{"hq", "lq", "prompt", "path"}`` with CHW float tensors in
[0, 1]. Every random choice of a sample (crop, flip, degradation) comes from a generator
seeded by ``(seed, epoch, index)``, so data-loader workers are reproducible in any order and
a resumed run (same seed, :meth:`PairedDataset.set_epoch`) sees the same pairs.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from diffbir.degradation.config import PipelineConfig
from diffbir.degradation.pipelines import DegradationPipeline, load_pipeline
from diffbir.errors import ConfigError, ImageReadError

CROP_MODES = ("random", "center", "resize")
PATH_COLUMNS = ("path", "image", "image_path", "file_name")
_MAX_SKIPS = 10


@dataclass(frozen=True)
class Record:
    """One training image: its file and its caption (possibly empty)."""

    path: Path
    prompt: str = ""


# ---------------------------------------------------------------------- sources


def read_records(
    source: str | os.PathLike[str],
    *,
    caption_column: str = "caption",
    path_column: str | None = None,
    recursive: bool = True,
) -> list[Record]:
    """List the images of ``source``: a folder, a ``.txt`` list, or a ``.csv``/``.parquet`` table.

    * folder: every image file in it (sub-folders too with ``recursive``), no captions;
    * ``.txt``: one path per line (relative paths are relative to the list's folder), an
      optional caption after a TAB; blank lines and ``#`` comments are skipped;
    * ``.csv``/``.parquet``: a path column (``path_column`` or the first of
      ``path, image, image_path, file_name``) and the ``caption_column``.
    """
    src = Path(source)
    if src.is_dir():
        from diffbir.imaging.paths import collect_inputs

        return [Record(item.path) for item in collect_inputs([src], recursive=recursive)]
    if not src.is_file():
        raise ConfigError(f"{src}: no such folder or file")
    suffix = src.suffix.lower()
    if suffix == ".txt":
        return _read_list(src)
    if suffix in (".csv", ".parquet"):
        rows = _read_csv(src) if suffix == ".csv" else _read_parquet(src)
        return _records_from_rows(src, rows, caption_column, path_column)
    raise ConfigError(f"{src}: a dataset source is a folder, a .txt list, or a .csv/.parquet file")


def _resolve(base: Path, entry: str) -> Path:
    path = Path(entry).expanduser()
    return path if path.is_absolute() else base / path


def _read_list(src: Path) -> list[Record]:
    records = []
    for line in src.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry, _, caption = line.partition("\t")
        records.append(Record(_resolve(src.parent, entry.strip()), caption.strip()))
    return records


def _read_csv(src: Path) -> tuple[list[str], list[dict[str, Any]]]:
    with src.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _read_parquet(src: Path) -> tuple[list[str], list[dict[str, Any]]]:
    missing = ConfigError(f"{src}: reading .parquet needs pyarrow (pip install pyarrow)")
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        try:
            import pandas as pd

            frame = pd.read_parquet(src)  # pandas with fastparquet also works
        except ImportError:  # no pandas, or pandas without a parquet engine
            raise missing from None
        return list(frame.columns), frame.to_dict("records")
    try:
        table = pq.read_table(src)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file to the user
        raise ConfigError(f"{src}: cannot read this parquet file ({err})") from None
    return list(table.column_names), table.to_pylist()


def _records_from_rows(src, table, caption_column, path_column) -> list[Record]:
    columns, rows = table
    if path_column is None:
        path_column = next((c for c in PATH_COLUMNS if c in columns), None)
        if path_column is None:
            raise ConfigError(
                f"{src}: no image path column (looked for {', '.join(PATH_COLUMNS)}); "
                f"columns are {columns}"
            )
    elif path_column not in columns:
        raise ConfigError(f"{src}: no column {path_column!r}; columns are {columns}")
    if caption_column not in columns:
        raise ConfigError(f"{src}: no caption column {caption_column!r}; columns are {columns}")
    records = []
    for row in rows:
        entry = row[path_column]
        if entry is None or str(entry).strip() == "":
            continue
        caption = row[caption_column]
        caption = "" if caption is None or caption != caption else str(caption)  # NaN -> ""
        records.append(Record(_resolve(src.parent, str(entry).strip()), caption))
    return records


# ---------------------------------------------------------------------- geometry


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    out = F.interpolate(image[None], size=size, mode="bicubic", align_corners=False, antialias=True)
    return out[0].clamp(0.0, 1.0)


def _short_side_to(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    return _resize(image, (max(size, round(h * scale)), max(size, round(w * scale))))


def crop_to_size(
    image: torch.Tensor, size: int, mode: str, rng: np.random.Generator
) -> torch.Tensor:
    """Bring a ``[3, H, W]`` image to ``size`` x ``size``.

    ``random``: a random window at the native resolution (images with a side shorter than
    ``size`` are first enlarged to fit); ``center``: the short side resized to ``size``,
    then the central window; ``resize``: the whole image resized (aspect not kept).
    """
    if mode == "resize":
        return _resize(image, (size, size))
    if mode == "center":
        image = _short_side_to(image, size)
        h, w = image.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
    elif mode == "random":
        if min(image.shape[-2:]) < size:
            image = _short_side_to(image, size)
        h, w = image.shape[-2:]
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    else:
        raise ConfigError(f"crop must be one of {list(CROP_MODES)}, got {mode!r}")
    return image[:, top : top + size, left : left + size].contiguous()


# ---------------------------------------------------------------------- dataset


class PairedDataset(Dataset):
    """HQ/LQ training pairs synthesised from HQ images with a degradation pipeline.

    Args:
        source: a folder, a ``.txt`` list, or a ``.csv``/``.parquet`` table (see
            :func:`read_records`).
        size: side of the square training crop.
        pipeline: a preset name, a ``.yaml``/``.toml`` path, a config, or a pipeline;
            ``None`` returns HQ crops only (degrade whole batches on the GPU instead).
        crop: ``random``, ``center`` or ``resize`` (see :func:`crop_to_size`).
        flip: random horizontal flips.
        caption_column: the caption column of a table.
        path_column: the image-path column of a table (found automatically if None).
        empty_prompt_prob: probability of dropping the caption (for classifier-free
            guidance training).
        seed: base seed; sample ``i`` of epoch ``e`` draws from ``(seed, e, i)``.
        max_pixels: refuse larger input images.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        size: int = 512,
        pipeline: str | os.PathLike[str] | PipelineConfig | Mapping | DegradationPipeline | None = (
            "codeformer"
        ),
        crop: str = "random",
        flip: bool = True,
        caption_column: str = "caption",
        path_column: str | None = None,
        empty_prompt_prob: float = 0.0,
        seed: int = 0,
        max_pixels: int = 100_000_000,
    ):
        if crop not in CROP_MODES:
            raise ConfigError(f"crop must be one of {list(CROP_MODES)}, got {crop!r}")
        if size < 8:
            raise ConfigError(f"size must be at least 8, got {size}")
        if not 0.0 <= empty_prompt_prob <= 1.0:
            raise ConfigError(f"empty_prompt_prob must be in [0, 1], got {empty_prompt_prob}")
        self.records = read_records(source, caption_column=caption_column, path_column=path_column)
        if not self.records:
            raise ConfigError(f"{source}: the dataset has no images")
        if pipeline is None or isinstance(pipeline, DegradationPipeline):
            self.pipeline = pipeline
        else:
            self.pipeline = load_pipeline(pipeline)
        self.size, self.crop, self.flip = int(size), crop, bool(flip)
        self.empty_prompt_prob = float(empty_prompt_prob)
        self.seed, self.epoch = int(seed), 0
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws :meth:`__getitem__` makes (call in every worker's copy
        through the sampler/loader, or before creating the loader)."""
        self.epoch = int(epoch)

    def generator(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def load_hq(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        """The ``[3, size, size]`` HQ crop of sample ``index`` (crop and flip drawn from ``rng``)."""
        from diffbir.imaging.io import read_image

        image = read_image(self.records[index].path, max_pixels=self.max_pixels, keep_alpha=False)
        hq = crop_to_size(image.rgb, self.size, self.crop, rng)
        if self.flip and rng.random() < 0.5:
            hq = hq.flip(-1)
        return hq

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        for attempt in range(_MAX_SKIPS):
            # A broken file is replaced by the next one, deterministically, so one bad
            # image does not stop a long training run.
            i = (index + attempt) % len(self)
            rng = self.generator(i)
            try:
                hq = self.load_hq(i, rng)
            except ImageReadError as err:
                warnings.warn(f"skipping unreadable training image: {err}", stacklevel=2)
                continue
            record = self.records[i]
            prompt = "" if rng.random() < self.empty_prompt_prob else record.prompt
            sample: dict[str, Any] = {"hq": hq, "prompt": prompt, "path": str(record.path)}
            if self.pipeline is not None:
                pair = self.pipeline(hq[None], rng)
                sample["hq"], sample["lq"] = pair.hq[0], pair.lq[0]
            return sample
        raise ImageReadError(f"{_MAX_SKIPS} unreadable images in a row from index {index}")


def dataset_from_config(
    data, source: str, *, train: bool, seed: int, prompts: bool
) -> PairedDataset:
    """The ``PairedDataset`` a training run's ``data`` section describes.

    Validation sets use centre crops without flips; captions are dropped at
    ``data.empty_prompt_prob`` only for training runs that use prompts.
    """
    return PairedDataset(
        source,
        size=data.size,
        pipeline=data.pipeline,
        crop=data.crop if train else "center",
        flip=data.flip and train,
        caption_column=data.caption_column,
        empty_prompt_prob=data.empty_prompt_prob if (train and prompts) else 0.0,
        seed=seed,
    )
