"""Degradations that run on the training device in whole batches (the release's v2.1 way).

``data.pipeline: realesrgan_batch`` makes the data loader yield HQ crops only; the stage
then degrades each batch on the device with a :class:`BatchDegradation` before its loss.
Such a degradation may keep state across batches (the Real-ESRGAN training pool that mixes
degradations of different batches): :meth:`BatchDegradation.state_dict` is saved with
every checkpoint, per process, so a resumed run continues with the same pool.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from diffbir.degradation.realesrgan_batch import load_realesrgan_batch
from diffbir.errors import ConfigError
from diffbir.training.data import dataset_from_config

#: ``data.pipeline`` names handled by :func:`load_batch_degradation`, not the data loader.
BATCH_PIPELINES = ("realesrgan_batch",)


class BatchDegradation(Protocol):
    """HQ batch -> (target HQ, LQ, prompts), on the device, drawing from ``generator``.

    ``hq``: ``[B, 3, H, W]`` in [0, 1]. The returned HQ may differ from the input (the
    release sharpens the target with USM) and, with a training pool, the returned images
    and prompts may come from earlier batches: the prompts travel with their images.
    """

    def __call__(
        self, hq: torch.Tensor, prompts: list[str], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def is_batch_pipeline(spec: Any) -> bool:
    """Whether ``data.pipeline`` names a batched, on-device degradation."""
    return isinstance(spec, str) and spec in BATCH_PIPELINES


def load_batch_degradation(spec: str, device: torch.device) -> BatchDegradation:
    """The batched degradation called ``spec`` (see :data:`BATCH_PIPELINES`), on ``device``.

    The Real-ESRGAN training degradation lives in :mod:`diffbir.degradation`; it is looked
    up here, once, so the training stages need not know where.
    """
    if not is_batch_pipeline(spec):
        raise ConfigError(
            f"data.pipeline: {spec!r} is not a batched degradation ({', '.join(BATCH_PIPELINES)})"
        )

    return load_realesrgan_batch(device=device)


class DataTask:
    """The data side both training stages share: the training set (listed by the loop,
    or read from ``data.source``), the batched degradation when ``data.pipeline`` names
    one, and its state in every checkpoint. A stage sets :attr:`prompts` (whether its
    samples carry captions) and calls :meth:`_init_data` from its constructor."""

    prompts = False

    def _init_data(self, cfg, device: torch.device) -> None:
        self.degrade: BatchDegradation | None = None
        if is_batch_pipeline(cfg.data.pipeline):
            self.degrade = load_batch_degradation(cfg.data.pipeline, device)
        self.records = None

    def _dataset(self, source, *, train: bool):
        pipeline = "config"
        if self.degrade is not None:
            # Training batches are degraded on the device; held-out images per image, with
            # the per-image form of the same second-order model.
            pipeline = None if train else "realesrgan"
        return dataset_from_config(
            self.cfg.data,
            source,
            train=train,
            seed=self.cfg.run.seed,
            prompts=self.prompts,
            pipeline=pipeline,
        )

    def train_dataset(self, records=None):
        """The training set (``records``: the loop's listing of ``data.source``)."""
        self.records = records
        return self._dataset(records if records is not None else self.cfg.data.source, train=True)

    def checkpoint_state(self) -> dict[str, Any] | None:
        """The batched degradation's state (its training pool), when there is one."""
        return None if self.degrade is None else self.degrade.state_dict()

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        if self.degrade is not None:
            self.degrade.load_state_dict(state)
