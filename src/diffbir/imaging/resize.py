"""Resizing, padding and quantisation exactly as the release's inference path does them.

* :func:`pil_bicubic` is Pillow's ``Image.resize(..., BICUBIC)`` on the 8-bit
  image, the release's pre-resize of the input (its fixed-point arithmetic
  and intermediate rounding are part of the result, so Pillow itself does it);
  inputs with more than 8 bits go through Pillow's float mode instead.
* :func:`bicubic` is ``F.interpolate(bicubic, antialias)``, never clamped.
* :func:`to_uint8_levels` truncates ``x * 255`` as the release does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def is_8bit(x: torch.Tensor) -> bool:
    """True when every value of ``x`` (in [0, 1]) is exactly k / 255."""
    levels = (x.float() * 255.0).round()
    return bool(torch.equal(levels / 255.0, x.float()))


def pil_bicubic(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Pillow's bicubic resize of a [B,3,H,W] batch in [0, 1] to ``size_hw`` (float32 out).

    8-bit content is resized as the 8-bit RGB image the release resizes (same
    result bit for bit); other content channel by channel in Pillow's 32-bit
    float mode (the same filter, without the 8-bit rounding).
    """
    h, w = size_hw
    if tuple(x.shape[-2:]) == (h, w):
        return x.float()
    out = []
    if is_8bit(x):
        levels = (x.float() * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for image in levels:
            resized = np.asarray(Image.fromarray(image, "RGB").resize((w, h), Image.BICUBIC))
            out.append(torch.from_numpy(resized.copy()).permute(2, 0, 1))
        return torch.stack(out).to(x.device).float().div(255.0)
    planes = x.float().cpu().numpy()
    for image in planes:
        channels = [
            np.asarray(Image.fromarray(c, "F").resize((w, h), Image.BICUBIC)) for c in image
        ]
        out.append(torch.from_numpy(np.stack(channels)))
    return torch.stack(out).to(x.device).clamp_(0, 1)


def bicubic(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize (``F.interpolate``), computed in float32, not clamped."""
    return F.interpolate(x.float(), size=tuple(size_hw), mode="bicubic", antialias=True)


def resize_for_display(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """:func:`bicubic` clamped to [0, 1], in ``x``'s dtype (``x`` itself at its size): for
    images shown or compared, not for the restore path's own resizes."""
    if tuple(x.shape[-2:]) == tuple(size_hw):
        return x
    return bicubic(x, size_hw).clamp_(0, 1).to(x.dtype)


def short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """The release's size for a short side of ``size``: the long side is truncated."""
    if h == w:
        return size, size
    if h < w:
        return size, int(w * (size / h))
    return int(h * (size / w)), size


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic (antialiased) resize to a short side of ``size``, as the release."""
    return bicubic(x, short_side_size(*x.shape[-2:], size))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right edges up to a multiple of ``multiple`` (as the release)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph))


def to_uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """``(x * 255).clamp(0, 255)`` truncated to integers: the release's output quantisation."""
    return (x.float() * 255.0).clamp(0, 255).to(torch.uint8)
