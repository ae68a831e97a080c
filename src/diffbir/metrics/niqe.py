"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan and Bovik, "Making a
'completely blind' image quality analyzer", IEEE SPL 2013), as the authors' MATLAB
release computes it and pyiqa/BasicSR port it.

1. The luma on the 0..255 scale, rounded to whole levels: YIQ's
   ``0.299 R + 0.587 G + 0.114 B`` (``niqe``, pyiqa's default) or the Y of BT.601
   YCbCr (``niqe-y``, BasicSR's default); ``crop_border`` cut from each side; the
   image cut down to whole 96x96 blocks.
2. At two scales (the image, then its MATLAB-bicubic half): the mean-subtracted,
   contrast-normalised coefficients ``(I - mu) / (sigma + 1)`` under a 7x7 Gaussian
   (sigma 7/6, edges replicated); per block (96, then 48 pixels), 18 features: the
   generalised Gaussian fit of the coefficients (shape, variance) and, for the four
   neighbour products (horizontal, vertical, two diagonals, circular within the
   block), an asymmetric generalised Gaussian fit (shape, mean, left and right scale).
   Shapes are looked up on the grid 0.2, 0.201, ..., 10 (in single precision, as
   pyiqa builds it).
3. A Gaussian fitted to the blocks' 36 features (rows with a NaN left out) and the
   distance ``sqrt(d^T pinv((C_pristine + C) / 2) d)`` between its mean and the
   pristine model's.

The pristine model (``data/niqe_pris_params.npz``) is BasicSR's file, the values of
the MATLAB release's ``modelparameters.mat``; BasicSR is Apache-2.0
(https://github.com/XPixelGroup/BasicSR/blob/master/LICENSE.txt).
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from diffbir.errors import DiffBIRError
from diffbir.metrics.pixel import crop_border, gaussian_window, ycbcr_y, yiq_y

BLOCK = 96
_PATCH_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@cache
def pristine_model() -> tuple[torch.Tensor, torch.Tensor]:
    """The pristine mean ``[36]`` and covariance ``[36, 36]`` (float64), shipped with the package."""
    ref = resources.files("diffbir.metrics").joinpath("data/niqe_pris_params.npz")
    with ref.open("rb") as f, np.load(f) as data:
        mu = torch.from_numpy(np.ravel(data["mu_pris_param"]).astype(np.float64))
        cov = torch.from_numpy(data["cov_pris_param"].astype(np.float64))
    return mu, cov


@cache
def _shape_grid() -> tuple[torch.Tensor, torch.Tensor]:
    gam = torch.arange(0.2, 10 + 0.001, 0.001, dtype=torch.float32).double()
    ratio = (2 * torch.lgamma(2 / gam) - torch.lgamma(1 / gam) - torch.lgamma(3 / gam)).exp()
    return gam, ratio


def aggd_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moment-matching fit of an asymmetric generalised Gaussian to each row of ``x``
    (``[B, N]``): shape, left scale, right scale."""
    gam, ratio = _shape_grid()
    gam, ratio = gam.to(x.device), ratio.to(x.device)
    left, right = x < 0, x > 0
    left_std = ((x * left).pow(2).sum(-1) / left.sum(-1)).sqrt()
    right_std = ((x * right).pow(2).sum(-1) / right.sum(-1)).sqrt()
    g = left_std / right_std
    r = x.abs().mean(-1).pow(2) / x.pow(2).mean(-1)
    r_norm = r * (g.pow(3) + 1) * (g + 1) / (g.pow(2) + 1).pow(2)
    alpha = gam[(ratio[None, :] - r_norm[:, None]).abs().argmin(-1)]
    factor = (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)).exp().sqrt()
    return alpha, left_std * factor, right_std * factor


def block_features(blocks: torch.Tensor) -> torch.Tensor:
    """The 18 features of each block of ``blocks`` (``[B, h, w]``), ``[B, 18]``."""
    flat = blocks.flatten(1)
    alpha, left, right = aggd_fit(flat)
    feats = [alpha, (left + right) / 2]
    for shift in _PATCH_SHIFTS:
        product = (blocks * torch.roll(blocks, shift, dims=(1, 2))).flatten(1)
        alpha, left, right = aggd_fit(product)
        mean = (right - left) * (torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha)).exp()
        feats += [alpha, mean, left, right]
    return torch.stack(feats, dim=1)


def _normalise(img: torch.Tensor) -> torch.Tensor:
    # The window in single precision, as MATLAB's fspecial in pyiqa, then widened.
    window = gaussian_window(7, 7.0 / 6.0).float().to(img)[None, None]
    padded = F.pad(img, (3, 3, 3, 3), mode="replicate")
    mu = F.conv2d(padded, window)
    second = F.conv2d(padded * padded, window)
    sigma = ((second - mu * mu).abs() + torch.finfo(img.dtype).eps).sqrt()
    return (img - mu) / (sigma + 1)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1).to(x.dtype)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)).to(x.dtype)
    return near + far


def _half_along(img: torch.Tensor, dim: int) -> torch.Tensor:
    """MATLAB's antialiased bicubic halving of ``img`` along ``dim`` (-2 or -1).

    Output sample ``i`` sits at ``(i + 0.5) * 2 - 0.5`` in the input; its taps (the
    kernel widened 2x, plus one on each side) read the input mirrored at the edges
    with the edge sample repeated, as MATLAB does. Weights, products and their sum
    are single precision, in the order pyiqa computes them, so the result is
    pyiqa's to the last bit in most samples.
    """
    scale = 0.5
    size_in = img.shape[dim]
    size_out = math.ceil(size_in * scale)
    taps = math.ceil(4 / scale) + 2
    pos = torch.linspace(0, size_out - 1, steps=size_out, dtype=torch.float32)
    pos = (pos + 0.5) / scale - 0.5
    base = pos.floor() - (taps // 2) + 1
    dist = pos - base
    weights = _cubic((dist[None, :] - torch.arange(taps, dtype=torch.float32)[:, None]) * scale)
    weights = weights / weights.sum(dim=0, keepdim=True)
    index = base.long()[None, :] + torch.arange(taps)[:, None]
    mirror = torch.cat([torch.arange(size_in), torch.arange(size_in).flip(0)])
    index = mirror[torch.remainder(index, 2 * size_in)].to(img.device)
    x = img.float().movedim(dim, -1)
    samples = x[..., index]  # [..., taps, size_out]
    out = (samples * weights.to(img.device)).sum(dim=-2)
    return out.movedim(-1, dim)


def matlab_half(img: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``imresize(img, 0.5)`` (bicubic, antialiased) of a ``[..., H, W]`` tensor,
    computed in single precision as pyiqa does (returned in ``img``'s dtype)."""
    return _half_along(_half_along(img, -2), -1).to(img.dtype)


def _blocks(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    nh, nw = h // size, w // size
    tiles = img[..., : nh * size, : nw * size].reshape(nh, size, nw, size)
    return tiles.permute(0, 2, 1, 3).reshape(nh * nw, size, size)


def niqe(x: torch.Tensor, *, crop: int = 0, luma: str = "yiq", block: int = BLOCK) -> torch.Tensor:
    """NIQE of each image of an RGB batch in [0, 1] (lower is better); see the module notes."""
    # The luma in single precision, as pyiqa takes it (a level that sits at .5 rounds
    # the way float32 puts it), then float64 for everything after.
    x = x.float()
    y = yiq_y(x) * 255.0 if luma == "yiq" else ycbcr_y(x) * 255.0
    y = crop_border(y.round().double(), crop)
    h, w = y.shape[-2:]
    if h < block or w < block:
        raise DiffBIRError(
            f"NIQE needs at least {block}x{block} pixels (after --crop-border), got {w}x{h}"
        )
    mu_p, cov_p = (t.to(y.device) for t in pristine_model())
    scores = []
    for image in y[:, 0]:
        image = image[: h // block * block, : w // block * block]
        feats = []
        for scale in (1, 2):
            normalised = _normalise(image[None, None])[0, 0]
            feats.append(block_features(_blocks(normalised, block // scale)))
            if scale == 1:
                image = matlab_half(image / 255.0) * 255.0
        feats = torch.cat(feats, dim=1)
        finite = feats[~feats.isnan().any(dim=1)]
        nan_free = torch.where(feats.isnan(), torch.zeros_like(feats), feats)
        mu = nan_free.sum(0) / (~feats.isnan()).sum(0)
        cov = torch.cov(finite.T, correction=1 if finite.shape[0] > 1 else 0)
        d = (mu_p - mu)[None]
        scores.append((d @ torch.linalg.pinv((cov_p + cov) / 2) @ d.T).sqrt().reshape(()))
    return torch.stack(scores)


def build(name: str, options, device: torch.device, *files):
    """The callable ``(x, ref) -> values`` of ``niqe`` or ``niqe-y`` (``ref`` unused)."""
    luma = "ycbcr" if name == "niqe-y" else "yiq"

    def metric(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return niqe(x, crop=options.crop_border, luma=luma)

    return metric
