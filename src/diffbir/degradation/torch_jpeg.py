"""JPEG compression written in torch, so a whole batch is compressed on its own device.

This follows what the release's training degradation does (its ``DiffJPEG``, after
BasicSR, run with ``differentiable=False``), not libjpeg:

* RGB -> YCbCr (JFIF, full range), Cb and Cr averaged over 2x2 blocks (4:2:0);
* the image is zero-padded at the bottom/right to a multiple of 16 and cropped after;
* each 8x8 block, level-shifted by -128, goes through the orthonormal 2-D DCT-II;
* coefficients are divided by the IJG tables scaled by a real-valued factor of the
  quality (``50 / q`` below 50, ``2 - q / 50`` above), rounded, multiplied back;
* the quality is a real number per image (the release draws it uniformly);
* no entropy coding (lossless anyway), chroma upsampled by repetition, output clamped
  to [0, 1] but not rounded to 8 bits.

Differences from a real codec (OpenCV/libjpeg): the scaled tables are not rounded to
integers; chroma is box-averaged and repeated rather than filtered; the luminance table
acts transposed (the release divides a coefficient at vertical frequency ``u`` and
horizontal frequency ``v`` by the standard table's entry ``[v][u]``; it is nearly
symmetric). We keep all three to match the release's training data. One deliberate
change: the scaled table is clamped to at least 1 (as libjpeg does), which only matters
above quality 95 and avoids the division by zero the release has at quality 100.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# IJG (JPEG standard, Annex K) tables in natural order: rows are vertical frequencies.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_CORNER = ((17, 18, 24, 47), (18, 21, 26, 66), (24, 26, 56, 99), (47, 66, 99, 99))

# JFIF full-range colour transforms (0..255 scale, chroma offset 128).
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCBCR_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136, -0.714136),
    (1.0, 1.772, 0.0),
)


def quantization_tables(device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(luma, chroma)`` 8x8 tables as the release applies them (luma transposed)."""
    luma = torch.tensor(_LUMA_TABLE, dtype=dtype, device=device).T.contiguous()
    chroma = torch.full((8, 8), 99.0, dtype=dtype, device=device)
    chroma[:4, :4] = torch.tensor(_CHROMA_CORNER, dtype=dtype, device=device)
    return luma, chroma


def quality_to_factor(quality: torch.Tensor) -> torch.Tensor:
    """The table scale of a (real-valued) quality in (0, 100]: ``50/q`` below 50, else ``2 - q/50``."""
    return torch.where(quality < 50, 50.0 / quality, 2.0 - quality / 50.0)


def dct_matrix(device=None, dtype=torch.float32) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix ``D`` (``D @ x`` transforms a column)."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * 0.5
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def _soft_round(x: torch.Tensor) -> torch.Tensor:
    # The release's differentiable rounding: exact at integers, a cubic in between.
    r = torch.round(x)
    return r + (x - r) ** 3


def _code_plane(
    plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor, rounding
) -> torch.Tensor:
    """Quantise one plane ``[B, H, W]`` (H, W multiples of 8) block by block; same shape."""
    b, h, w = plane.shape
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3) - 128.0
    coeff = dct @ blocks @ dct.T
    coeff = rounding(coeff / table) * table
    blocks = dct.T @ coeff @ dct + 128.0
    return blocks.transpose(2, 3).reshape(b, h, w)


def jpeg_round_trip(images: torch.Tensor, quality, *, differentiable: bool = False) -> torch.Tensor:
    """Compress and decompress ``images`` ``[B, 3, H, W]`` (RGB, [0, 1]) at ``quality``.

    ``quality`` is a number or one (real) value per image in [1, 100]. With
    ``differentiable`` the rounding is the release's cubic surrogate, so gradients flow.
    Runs on the images' device in float32; returns float32 in [0, 1].
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an RGB batch [B, 3, H, W], got {tuple(images.shape)}")
    b, _, h, w = images.shape
    device = images.device
    q = torch.as_tensor(quality, dtype=torch.float32, device=device).reshape(-1)
    if q.numel() == 1:
        q = q.expand(b)
    if q.numel() != b:
        raise ValueError(f"expected {b} JPEG qualities, got {q.numel()}")
    if not bool(((q >= 1) & (q <= 100)).all()):
        raise ValueError("JPEG quality must lie in [1, 100]")
    factor = quality_to_factor(q).view(b, 1, 1, 1, 1)
    luma_t, chroma_t = quantization_tables(device)
    luma_t = (luma_t * factor).clamp_min(1.0)
    chroma_t = (chroma_t * factor).clamp_min(1.0)
    dct = dct_matrix(device)
    rounding = _soft_round if differentiable else torch.round

    x = images.to(torch.float32)
    ph, pw = (-h) % 16, (-w) % 16
    x = F.pad(x, (0, pw, 0, ph), value=0.0) * 255.0
    to_ycc = torch.tensor(_RGB_TO_YCBCR, device=device)
    ycc = torch.einsum("ij,bjhw->bihw", to_ycc, x)
    y = ycc[:, 0]
    chroma = F.avg_pool2d(ycc[:, 1:] + 128.0, kernel_size=2, stride=2)

    y = _code_plane(y, luma_t, dct, rounding)
    cb = _code_plane(chroma[:, 0], chroma_t, dct, rounding)
    cr = _code_plane(chroma[:, 1], chroma_t, dct, rounding)
    chroma = torch.stack((cb, cr), dim=1).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    ycc = torch.cat((y.unsqueeze(1), chroma - 128.0), dim=1)
    to_rgb = torch.tensor(_YCBCR_TO_RGB, device=device)
    rgb = torch.einsum("ij,bjhw->bihw", to_rgb, ycc)
    return (rgb.clamp(0.0, 255.0) / 255.0)[:, :, :h, :w].contiguous()
