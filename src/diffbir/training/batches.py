"""What the training loop feeds itself: the data order, the per-micro-batch generators,
the data counts.

The order is a pure function of ``(seed, epoch)`` (:class:`ResumableBatchSampler`), so
a resumed run continues bit-for-bit from the micro-batch it stopped at
(:func:`endless_batches`); every micro-batch's random draws come from a generator
fixed by where it is in the run (:func:`step_generator`). :func:`count_batch` and
:func:`reduce_counts` keep the counts the logs and checkpoints report (images,
skipped images, prompt kinds).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from diffbir.errors import ConfigError

__all__ = [
    "ResumableBatchSampler",
    "count_batch",
    "endless_batches",
    "reduce_counts",
    "step_generator",
    "to_device",
]


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled batches of one process, fixed by ``(seed, epoch)``, resumable mid-epoch.

    Every epoch is a permutation of the dataset cut into global batches of
    ``batch_size * world_size`` (the ragged end is dropped; a dataset smaller than one
    global batch is repeated to fill it); process ``rank`` takes its slice of each.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ConfigError("the dataset is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return max(1, self.n // (self.batch_size * self.world_size))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start``."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        global_batch = self.batch_size * self.world_size
        order = np.resize(perm, len(self) * global_batch)  # repeats cyclically when short
        for b in range(self.start, len(self)):
            first = b * global_batch + self.rank * self.batch_size
            yield order[first : first + self.batch_size].tolist()


def endless_batches(
    loader: DataLoader, sampler: ResumableBatchSampler, dataset: Dataset, start: int
) -> Iterator[Any]:
    """Batches from micro-batch number ``start`` on, epoch after epoch."""
    epoch, skip = divmod(start, len(sampler))
    while True:
        sampler.set_epoch(epoch, skip)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # before iter(): workers copy the dataset then
        yield from loader
        epoch, skip = epoch + 1, 0


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; other values untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def step_generator(seed: int, step: int, rank: int, micro: int, device: torch.device):
    """The generator of one micro-batch's draws: a pure function of where it is in the run."""
    g = torch.Generator(device if device.type == "cuda" else "cpu")
    mixed = np.random.default_rng([seed, step, rank, micro]).integers(2**62)
    return g.manual_seed(int(mixed))


def count_batch(batch: dict[str, Any], counts: dict[str, float]) -> None:
    """Add one (CPU) batch to the data counts."""
    hq = batch.get("hq")
    counts["images"] += 0 if hq is None else int(hq.shape[0])
    if "skipped" in batch:
        counts["skipped_images"] += int(torch.as_tensor(batch["skipped"]).sum())
    if "prompt_kind" in batch:
        kinds = torch.as_tensor(batch["prompt_kind"])
        for value, name in enumerate(("prompt_empty", "prompt_short", "prompt_long")):
            counts[name] += int((kinds == value).sum())


def reduce_counts(acc, local: dict[str, float]) -> dict[str, float]:
    """Totals over all processes: sums, and maxima for names ending in ``_max``."""
    keys = sorted(local)
    out: dict[str, float] = {}
    sums = [k for k in keys if not k.endswith("_max")]
    maxes = [k for k in keys if k.endswith("_max")]
    device = acc.device
    if sums:
        t = torch.tensor([float(local[k]) for k in sums], dtype=torch.float64, device=device)
        if acc.num_processes > 1:
            t = acc.reduce(t, reduction="sum")
        out |= {k: float(v) for k, v in zip(sums, t.tolist(), strict=True)}
    if maxes:
        t = torch.tensor([float(local[k]) for k in maxes], dtype=torch.float64, device=device)
        if acc.num_processes > 1:
            t = acc.gather(t[None]).amax(0)
        out |= {k: float(v) for k, v in zip(maxes, t.tolist(), strict=True)}
    return out
