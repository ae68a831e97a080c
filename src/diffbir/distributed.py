"""Sharding work across processes started by ``accelerate launch`` (or torchrun).

A single process is a shard of one. With several, process ``rank`` takes every
``world``-th item, so each output is written exactly once, and the summaries
are gathered on every rank at the end so that all exit with the same status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

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
        from accelerate import PartialState

        state = PartialState()
        return cls(rank=state.process_index, world=state.num_processes, device=str(state.device))

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's items: every ``world``-th, starting at ``rank``."""
        return list(items[self.rank :: self.world])

    def gather(self, summary):
        """Merge the summaries of all shards (every rank gets the total)."""
        if self.world == 1:
            return summary
        import torch.distributed as dist

        parts: list = [None] * self.world
        dist.all_gather_object(parts, summary)
        total = type(summary)()
        for part in parts:
            total.merge(part)
        return total
