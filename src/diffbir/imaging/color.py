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
    """Blur every channel with the 3x3 binomial kernel dilated by ``dilation``.

    The kernel [[1,2,1],[2,4,2],[1,2,1]]/16 is separable, so it runs as two
    1-D passes of shifted adds on replicate-padded views: the same result as
    the 2-D convolution, with a fraction of its time and memory on large images.
    """
    d = dilation
    h, w = x.shape[-2:]
    # Replicate padding by the dilation keeps the size and avoids dark borders.
    p = F.pad(x, (d, d, 0, 0), mode="replicate")
    x = (p[..., :, :w] + p[..., :, 2 * d : 2 * d + w]).add_(p[..., :, d : d + w], alpha=2.0)
    p = F.pad(x.div_(4.0), (0, 0, d, d), mode="replicate")
    y = (p[..., :h, :] + p[..., 2 * d : 2 * d + h, :]).add_(p[..., d : d + h, :], alpha=2.0)
    return y.div_(4.0)


def wavelet_lowpass(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The low-frequency part of ``x`` after ``levels`` a-trous wavelet levels."""
    if levels < 1:
        raise ColorFixError(f"wavelet levels must be at least 1, got {levels}")
    for i in range(levels):
        x = _atrous_blur(x, 2**i)
    return x


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` (NCHW) into ``(high, low)`` with ``levels`` a-trous wavelet levels.

    Level ``i`` blurs with the binomial kernel dilated by ``2**i``; its detail
    band is the difference before/after. ``high`` is the sum of the detail
    bands (which telescopes to ``x - low``), ``low`` the last blurred image.
    """
    low = wavelet_lowpass(x, levels)
    return x - low, low


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Return ``content``'s high frequencies plus ``style``'s low frequencies.

    Args:
        content: the generated image, NCHW.
        style: the colour reference (e.g. the stage-1 output), same shape.
        levels: number of a-trous wavelet levels (5 in DiffBIR).

    The result is not clamped; clamp to [0, 1] before saving.
    """
    _check_pair(content, style)
    # high(content) + low(style) = content - low(content) + low(style)
    out = wavelet_lowpass(style, levels)
    out.sub_(wavelet_lowpass(content, levels))
    return out.add_(content)


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
