"""Sharding work across processes started by ``accelerate launch`` or ``torchrun``.

A single process is a shard of one. With several, process ``rank`` takes every
``world``-th item, so each output is written exactly once, and the summaries
are gathered on every rank at the end so that all exit with the same status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    device: str | None = None

    @classmethod
    def current(cls) -> Shard:
        """The shard of this process, as the launcher described it (read at call time)."""
        import os

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        # accelerate launch and torchrun both describe the job in these variables.
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        device = f"cuda:{local_rank}" if cuda else "cpu"
        if cuda:
            torch.cuda.set_device(local_rank)
        return cls(rank=rank, world=world, device=device)

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's items: every ``world``-th, starting at ``rank``."""
        return list(items[self.rank :: self.world])

    def gather(self, summary):
        """Merge the summaries of all shards (every rank gets the total)."""
        if self.world == 1:
            return summary
        import torch.distributed as dist

        parts: list = [None] * self.world
        # all_gather_object pickles through the default backend's device.
        dist.all_gather_object(parts, summary)
        total = type(summary)()
        for part in parts:
            total.merge(part)
        return total
