"""Colour correction of a generated image toward a reference.

The diffusion stage reproduces texture well but lets global colour drift. The
fix keeps the fine detail of the generated image (``content``) and takes the
coarse colour of the stage-1 output (``style``):

* :func:`wavelet_color_fix` splits both with an a-trous ("with holes") wavelet
  decomposition and recombines ``content``'s high frequencies with ``style``'s
  low frequencies (the default of DiffBIR and StableSR).
* :func:`adain_color_fix` matches each channel's mean and standard deviation.

Both take and return NCHW tensors; device and dtype follow the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffbir.errors import DiffBIRError

__all__ = ["ColorFixError", "adain_color_fix", "wavelet_color_fix", "wavelet_decompose"]


class ColorFixError(DiffBIRError, ValueError):
    """The two images handed to a colour fix do not fit together."""


def _check_pair(content: torch.Tensor, style: torch.Tensor) -> None:
    if content.dim() != 4 or style.dim() != 4:
        raise ColorFixError(
            f"colour fix needs NCHW tensors, got {tuple(content.shape)} and {tuple(style.shape)}"
        )
    if content.shape != style.shape:
        raise ColorFixError(
            "colour fix needs content and style of the same shape, got "
            f"{tuple(content.shape)} and {tuple(style.shape)}"
        )


def _atrous_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """Blur every channel with the 3x3 binomial kernel dilated by ``dilation``."""
    channels = x.shape[1]
    kernel = torch.tensor(
        [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=x.device, dtype=x.dtype
    ).div_(16.0)
    weight = kernel.expand(channels, 1, 3, 3)
    # Replicate padding by the dilation keeps the size and avoids dark borders.
    padded = F.pad(x, (dilation, dilation, dilation, dilation), mode="replicate")
    return F.conv2d(padded, weight, dilation=dilation, groups=channels)


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` (NCHW) into ``(high, low)`` with ``levels`` a-trous wavelet levels.

    Level ``i`` blurs with the binomial kernel dilated by ``2**i``; its detail
    band is the difference before/after. ``high`` is the sum of the detail
    bands, ``low`` the last blurred image, so ``high + low == x``.
    """
    if levels < 1:
        raise ColorFixError(f"wavelet levels must be at least 1, got {levels}")
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = _atrous_blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Return ``content``'s high frequencies plus ``style``'s low frequencies.

    Args:
        content: the generated image, NCHW.
        style: the colour reference (e.g. the stage-1 output), same shape.
        levels: number of a-trous wavelet levels (5 in DiffBIR).

    The result is not clamped; clamp to [0, 1] before saving.
    """
    _check_pair(content, style)
    content_high, _ = wavelet_decompose(content, levels)
    _, style_low = wavelet_decompose(style, levels)
    return content_high + style_low


def adain_color_fix(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give each channel of ``content`` the mean and standard deviation of ``style``.

    Statistics are per image and per channel over H and W (AdaIN); ``eps`` is
    added to the variances so flat channels do not divide by zero.
    """
    _check_pair(content, style)
    c_mean = content.mean(dim=(2, 3), keepdim=True)
    c_std = (content.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    s_mean = style.mean(dim=(2, 3), keepdim=True)
    s_std = (style.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    return (content - c_mean) / c_std * s_std + s_mean
