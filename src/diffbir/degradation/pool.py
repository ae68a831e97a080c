"""The training pair pool of Real-ESRGAN training: mixes degradations across batches.

A batch degraded on the device shares its per-batch draws (resize factors and modes,
noise kind, order of the last steps). The pool holds ``size`` earlier samples; once it is
full, each call hands out a uniformly random subset of the pool, in random order, and
puts the new batch in the places it leaves. While it fills, a call stores a copy of the
batch and returns the batch itself, so the samples of the first ``size / B`` batches can
come out twice (now, and later from the pool); every later sample comes out at most once.

The release shuffles the whole pool and swaps its first ``B`` rows; drawing ``B`` rows
of a random permutation and swapping those is the same in distribution without copying
the pool every step.
"""

from __future__ import annotations

from typing import Any

import torch


class TrainingPool:
    """A pool of ``size`` samples; ``pool(*items)`` swaps a batch in and returns one out.

    Each item is a tensor ``[B, ...]`` or a list of ``B`` objects (e.g. captions); every
    call must give the same kinds and shapes. ``size`` must be a multiple of ``B``. The
    pool's tensors live on the device (and dtype) of the first batch's tensors; the
    shuffle comes from ``generator`` (a CPU ``torch.Generator``; seeded from ``seed``
    when not given).
    """

    def __init__(
        self, size: int, *, generator: torch.Generator | None = None, seed: int | None = None
    ):
        if int(size) < 1:
            raise ValueError(f"the training pool size must be positive, got {size}")
        self.size = int(size)
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        if generator.device.type != "cpu":
            raise ValueError("the training pool shuffles with a CPU torch.Generator")
        self.generator = generator
        self._items: list[torch.Tensor | list[Any]] | None = None
        self._filled = 0

    @property
    def filled(self) -> int:
        """How many samples the pool holds."""
        return self._filled

    @property
    def full(self) -> bool:
        """Whether the pool is full (calls now return pooled samples)."""
        return self._filled == self.size

    def __repr__(self) -> str:
        return f"TrainingPool(size={self.size}, filled={self._filled})"

    def _batch_size(self, items) -> int:
        if not items:
            raise ValueError("the training pool needs at least one item per call")
        sizes = {len(x) for x in items}
        if len(sizes) != 1:
            raise ValueError(f"pool items disagree on the batch size: {sorted(sizes)}")
        b = sizes.pop()
        if b < 1 or self.size % b != 0:
            raise ValueError(
                f"the training pool size {self.size} must be a multiple of the batch size {b}"
            )
        return b

    def _allocate(self, items) -> None:
        store: list[torch.Tensor | list[Any]] = []
        for x in items:
            if isinstance(x, torch.Tensor):
                store.append(x.new_zeros((self.size, *x.shape[1:])))
            else:
                store.append([None] * self.size)
        self._items = store

    def _check(self, items) -> None:
        assert self._items is not None
        if len(items) != len(self._items):
            raise ValueError(
                f"the pool holds {len(self._items)} items per sample, got {len(items)}"
            )
        for i, (x, s) in enumerate(zip(items, self._items)):
            if isinstance(s, torch.Tensor):
                if not isinstance(x, torch.Tensor) or x.shape[1:] != s.shape[1:]:
                    got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                    raise ValueError(
                        f"pool item {i}: expected a tensor [B, {', '.join(map(str, s.shape[1:]))}], "
                        f"got {got}"
                    )
            elif isinstance(x, torch.Tensor):
                raise ValueError(f"pool item {i}: expected a list, got a tensor")

    @torch.no_grad()
    def __call__(self, *items):
        """Swap the batch ``items`` into the pool; return a batch of the same kinds and shapes."""
        b = self._batch_size(items)
        if self._items is None:
            self._allocate(items)
        self._check(items)
        assert self._items is not None
        for i, (x, s) in enumerate(zip(items, self._items)):
            if isinstance(s, torch.Tensor) and s.device != x.device:
                self._items[i] = s.to(x.device)  # restored from a (CPU) state_dict
        if not self.full:
            start = self._filled
            for x, s in zip(items, self._items):
                if isinstance(s, torch.Tensor):
                    s[start : start + b] = x.to(s)
                else:
                    s[start : start + b] = list(x)
            self._filled += b
            return items if len(items) > 1 else items[0]
        rows = torch.randperm(self.size, generator=self.generator)[:b]
        out: list[torch.Tensor | list[Any]] = []
        for x, s in zip(items, self._items):
            if isinstance(s, torch.Tensor):
                index = rows.to(s.device)
                out.append(s[index].clone())
                s[index] = x.to(s)
            else:
                idx = rows.tolist()
                out.append([s[i] for i in idx])
                for j, i in enumerate(idx):
                    s[i] = x[j]
        return tuple(out) if len(out) > 1 else out[0]

    def state_dict(self) -> dict[str, Any]:
        """A copy of the pool's contents (on the CPU), fill level and shuffle state.

        The copy is detached from the live pool; the pool moves back to the device of the
        first batch it sees after :meth:`load_state_dict`.
        """
        items = None
        if self._items is not None:
            items = [
                s.detach().to("cpu", copy=True) if isinstance(s, torch.Tensor) else list(s)
                for s in self._items
            ]
        return {
            "size": self.size,
            "filled": self._filled,
            "items": items,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (same ``size``)."""
        if int(state["size"]) != self.size:
            raise ValueError(f"pool state is for size {state['size']}, this pool has {self.size}")
        items = state["items"]
        self._items = (
            None
            if items is None
            else [s.clone() if isinstance(s, torch.Tensor) else list(s) for s in items]
        )
        self._filled = int(state["filled"])
        self.generator.set_state(state["generator"])
