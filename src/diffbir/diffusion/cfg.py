"""Classifier-free guidance (Ho & Salimans 2022) as a model_fn wrapper.

``out = uncond + s_t (cond - uncond)``, cond and uncond evaluated in ONE batched
call on ``cat([x, x])`` with ``cat([cond_context, uncond_context])``.

Optional cosine rescale of the scale over time, as the DiffBIR v2.1 release
does it (``Sampler.get_cfg_scale`` with ``rescale_cfg``), for scale s > 1 and
original timestep t of T = 1000::

    s_t = 1 + s * (1 - cos(pi * ((T - t) / T) ** 5)) / 2

so guidance is ~off (s_t ~ 1) at high noise and rises to 1 + s at t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError

RESCALES = ("none", "cosine")


def cosine_rescaled_scale(scale: float, t: int, num_timesteps: int = 1000) -> float:
    """The v2.1 release's time-dependent CFG scale (unchanged for scale <= 1)."""
    if scale <= 1.0:
        return scale
    progress = (num_timesteps - t) / num_timesteps
    return 1.0 + scale * (1.0 - math.cos(math.pi * progress**5.0)) / 2.0


def concat_context(a: Any, b: Any) -> Any:
    """Concatenate two contexts along the batch: tensors, dicts/lists/tuples of them, or None."""
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.cat([a, b], dim=0)
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise ConfigError("cond and uncond contexts must have the same keys")
        return {k: concat_context(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return type(a)(concat_context(x, y) for x, y in zip(a, b))
    raise ConfigError("cond and uncond contexts must have the same structure")


def classifier_free_guidance(
    model: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    cond_context: Any,
    uncond_context: Any,
    scale: float,
    *,
    rescale: str = "none",
    num_timesteps: int = 1000,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``model(x, t, context)`` into ``model_fn(x, t)`` applying CFG with a negative prompt.

    ``scale == 1`` (after any rescale) or ``uncond_context is None``: one plain
    conditional call. Otherwise one batched call of twice the batch, split into
    cond (first half) and uncond (second half). ``rescale="cosine"`` applies
    :func:`cosine_rescaled_scale` per step (all samples of a batch share t).
    Contexts are tensors with the batch first, or dicts/lists of them (e.g.
    ``{"c_txt": ..., "c_img": ...}``); they are concatenated once, here.
    """
    if rescale not in RESCALES:
        raise ConfigError(f"unknown CFG rescale {rescale!r}; expected one of {RESCALES}")
    scale = float(scale)
    both = None if uncond_context is None else concat_context(cond_context, uncond_context)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = scale
        if rescale == "cosine":
            s = cosine_rescaled_scale(scale, int(t.reshape(-1)[0]), num_timesteps)
        if both is None or s == 1.0:
            return model(x, t, cond_context)
        out = model(torch.cat([x, x]), torch.cat([t, t]), both)
        cond, uncond = out.chunk(2)
        return uncond + s * (cond - uncond)

    return model_fn
