"""Exponential moving average of a model's trainable parameters."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """A float32 shadow copy ``s <- decay * s + (1 - decay) * p`` of the parameters that train.

    Kept on the parameters' device; saved and restored with the training checkpoint.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {
            name: p.detach().float().clone()
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow toward the current parameters."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged values into ``model``'s parameters."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {', '.join(missing[:5])}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])
