"""Training data: HQ images from a folder, a list file or a table, degraded on the fly.

:class:`PairedDataset` yields ``{"hq", "lq", "prompt", "prompt_kind", "path", "skipped"}``
with CHW float tensors in [0, 1]. Every random choice of a sample (crop, flip, long or
short caption, caption dropped, degradation) comes from a generator seeded by
``(seed, epoch, index)``, so data-loader workers are reproducible in any order and a
resumed run (same seed, :meth:`PairedDataset.set_epoch`) sees the same pairs. The listing
of the source is :mod:`diffbir.training.records`.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from diffbir.degradation.config import PipelineConfig
from diffbir.degradation.pipelines import DegradationPipeline, load_pipeline
from diffbir.errors import ConfigError, ImageReadError
from diffbir.imaging.io import read_image
from diffbir.training.records import Record, RecordList, read_records

__all__ = [
    "PairedDataset",
    "Record",
    "RecordList",
    "WorkerSeeder",
    "choose_prompt",
    "crop_to_size",
    "dataset_from_config",
    "read_records",
]

CROP_MODES = ("random", "center", "resize", "none")
_MAX_SKIPS = 10
#: ``prompt_kind`` of a sample: the caption was dropped, the short one, the long one.
PROMPT_EMPTY, PROMPT_SHORT, PROMPT_LONG = 0, 1, 2


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
    then the central window; ``resize``: the whole image resized (aspect not kept);
    ``none``: the image must already be ``size`` x ``size`` (the release's v2.1 data);
    another size raises :class:`~diffbir.errors.ImageReadError` (skipped and counted).
    """
    if mode == "none":
        if tuple(image.shape[-2:]) != (size, size):
            h, w = image.shape[-2:]
            raise ImageReadError(f"{w}x{h}, but data.crop none needs {size}x{size} images")
        return image
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


def choose_prompt(
    short: str, long: str, rng: np.random.Generator, long_prob: float, empty_prob: float
) -> tuple[str, int]:
    """The prompt of one sample and its kind, in the release's order: the long caption with
    ``long_prob`` (else the short one), then dropped to "" with ``empty_prob``.

    Both draws are always taken, so later draws do not shift with the probabilities.
    """
    pick_long = rng.random() < long_prob
    drop = rng.random() < empty_prob
    if drop:
        return "", PROMPT_EMPTY
    return (long, PROMPT_LONG) if pick_long else (short, PROMPT_SHORT)


class PairedDataset(Dataset):
    """HQ/LQ training pairs synthesised from HQ images with a degradation pipeline.

    Args:
        source: a folder, a ``.txt`` list, a ``.csv``/``.parquet`` table (see
            :func:`~diffbir.training.records.read_records`), or a listed
            :class:`~diffbir.training.records.RecordList`.
        size: side of the square training crop.
        pipeline: a preset name, a ``.yaml``/``.toml`` path, a config, or a pipeline;
            ``None`` returns HQ crops only (degrade whole batches on the device instead).
        crop: ``random``, ``center``, ``resize`` or ``none`` (see :func:`crop_to_size`).
        flip: random horizontal flips.
        caption_column: the caption column of a table; ``None``: no captions at all
            (every prompt is "").
        long_caption_column: a table's long-caption column, drawn with ``long_caption_prob``.
        path_column: the image-path column of a table (found automatically if None).
        empty_prompt_prob: probability of dropping the caption (for classifier-free
            guidance training).
        sidecar_captions: a folder's ``NAME.txt`` beside ``NAME.png`` is its caption.
        seed: base seed; sample ``i`` of epoch ``e`` draws from ``(seed, e, i)``.
        max_pixels: refuse larger input images.

    A sample is ``{"hq", "lq" (with a pipeline), "prompt", "prompt_kind", "path",
    "skipped"}``: ``skipped`` counts the unreadable images passed over to make it (each is
    replaced by the next one, deterministically), so the training loop can count them
    whatever worker process read them.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | RecordList,
        *,
        size: int = 512,
        pipeline: str | os.PathLike[str] | PipelineConfig | Mapping | DegradationPipeline | None = (
            "codeformer"
        ),
        crop: str = "random",
        flip: bool = True,
        caption_column: str | None = "caption",
        long_caption_column: str | None = None,
        long_caption_prob: float = 0.0,
        path_column: str | None = None,
        empty_prompt_prob: float = 0.0,
        sidecar_captions: bool = True,
        seed: int = 0,
        max_pixels: int = 100_000_000,
    ):
        if crop not in CROP_MODES:
            raise ConfigError(f"crop must be one of {list(CROP_MODES)}, got {crop!r}")
        if size < 8:
            raise ConfigError(f"size must be at least 8, got {size}")
        for name, p in (
            ("empty_prompt_prob", empty_prompt_prob),
            ("long_caption_prob", long_caption_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {p}")
        if isinstance(source, RecordList):
            self.records = source
        else:
            self.records = read_records(
                source,
                caption_column=caption_column,
                long_caption_column=long_caption_column,
                path_column=path_column,
                sidecar_captions=sidecar_captions,
            )
        if not len(self.records):
            raise ConfigError(f"{self.records.source}: the dataset has no images")
        if pipeline is None or isinstance(pipeline, DegradationPipeline):
            self.pipeline = pipeline
        else:
            self.pipeline = load_pipeline(pipeline)
        self.size, self.crop, self.flip = int(size), crop, bool(flip)
        self.captions = caption_column is not None
        self.empty_prompt_prob = float(empty_prompt_prob)
        self.long_caption_prob = float(long_caption_prob) if long_caption_column else 0.0
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
        path = self.records.path(index)
        image = read_image(path, max_pixels=self.max_pixels, keep_alpha=False)
        try:
            hq = crop_to_size(image.rgb, self.size, self.crop, rng)
        except ImageReadError as err:
            raise ImageReadError(f"{path}: {err}") from None
        if self.flip and rng.random() < 0.5:
            hq = hq.flip(-1)
        return hq

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        for attempt in range(_MAX_SKIPS):
            # A broken file is replaced by the next one, deterministically, so one bad
            # image does not stop a long training run; ``skipped`` reports it.
            i = (index + attempt) % len(self)
            rng = self.generator(i)
            try:
                hq = self.load_hq(i, rng)
            except ImageReadError as err:
                warnings.warn(f"skipping unreadable training image: {err}", stacklevel=2)
                continue
            short = self.records.caption(i) if self.captions else ""
            long = self.records.long_caption(i) if self.captions else ""
            prompt, kind = choose_prompt(
                short, long, rng, self.long_caption_prob, self.empty_prompt_prob
            )
            sample: dict[str, Any] = {
                "hq": hq,
                "prompt": prompt,
                "prompt_kind": kind,
                "path": str(self.records.path(i)),
                "skipped": attempt,
            }
            if self.pipeline is not None:
                pair = self.pipeline(hq[None], rng)
                sample["hq"], sample["lq"] = pair.hq[0], pair.lq[0]
            return sample
        raise ImageReadError(f"{_MAX_SKIPS} unreadable images in a row from index {index}")


class WorkerSeeder:
    """``worker_init_fn`` of a training loader: seeds the global torch, NumPy and Python
    generators of each worker from ``(seed, epoch, rank, worker)``.

    The samples themselves draw from :meth:`PairedDataset.generator`; this makes any other
    randomness a worker touches (a library's own draws) reproducible too.
    """

    def __init__(self, seed: int, rank: int = 0):
        self.seed, self.rank = int(seed), int(rank)

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        epoch = int(getattr(info.dataset, "epoch", 0)) if info is not None else 0
        mixed = np.random.default_rng([self.seed, epoch, self.rank, int(worker_id)])
        value = int(mixed.integers(2**32))
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)


def dataset_from_config(
    data,
    source: str | RecordList,
    *,
    train: bool,
    seed: int,
    prompts: bool,
    pipeline: Any = "config",
) -> PairedDataset:
    """The ``PairedDataset`` a training run's ``data`` section describes.

    Validation sets use centre crops (or ``none`` when training uses ``none``) without
    flips; captions are dropped at ``data.empty_prompt_prob`` only for training runs that
    use prompts. ``pipeline``: ``"config"`` takes ``data.pipeline``; anything else (``None``
    for degradation done on the device in batches) replaces it.
    """
    return PairedDataset(
        source,
        size=data.size,
        pipeline=data.pipeline if pipeline == "config" else pipeline,
        crop=data.crop if train or data.crop == "none" else "center",
        flip=data.flip and train,
        caption_column=data.caption_column if prompts else None,
        long_caption_column=data.long_caption_column,
        long_caption_prob=data.long_caption_prob if train else 0.0,
        path_column=data.path_column,
        empty_prompt_prob=data.empty_prompt_prob if (train and prompts) else 0.0,
        sidecar_captions=data.sidecar_captions,
        seed=seed,
    )
