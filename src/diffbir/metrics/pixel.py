"""PSNR and SSIM, with the conventions restoration papers report them with.

Both take ``[N, 3, H, W]`` batches in [0, 1] and return one float64 value per image.

* ``crop_border`` pixels are cut from every side first (of the RGB image).
* ``y_channel`` compares the luma of ITU-R BT.601 YCbCr,
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (on the 0..255 scale), as BasicSR's
  ``test_y_channel`` does and as pyiqa does with ``color_space='ycbcr'``; without it
  the three RGB channels are compared.
* PSNR: ``10 log10(1 / (MSE + 1e-8))`` on the [0, 1] scale (pyiqa's ``psnr``), so two
  identical images give 80 dB rather than infinity.
* SSIM (Wang et al. 2004, the authors' MATLAB settings): the image on the 0..255 scale
  rounded to whole levels, an 11x11 Gaussian window of sigma 1.5, the 'valid' part of
  the maps only, ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``, the contrast-structure
  term clipped at zero, the mean of the map over pixels and channels (pyiqa's
  ``ssim``/``ssimc``). No downsampling of large images.
"""

from __future__ import annotations

import torch

from diffbir.errors import DiffBIRError

#: BT.601 weights of R, G, B in Y (0..255 scale for inputs in [0, 1]) and its offset.
YCBCR_Y_WEIGHTS = (65.481, 128.553, 24.966)
YCBCR_Y_OFFSET = 16.0
#: Luma of YIQ (no offset; BT.601 primaries), the Y pyiqa uses by default.
YIQ_Y_WEIGHTS = (0.299, 0.587, 0.114)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
PSNR_EPS = 1e-8


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    """``x`` without ``border`` pixels on each side."""
    if border <= 0:
        return x
    return x[..., border:-border, border:-border]


def ycbcr_y(x: torch.Tensor) -> torch.Tensor:
    """The Y of BT.601 YCbCr of an RGB batch in [0, 1], on the [0, 1] scale (16/255..235/255)."""
    a, b, c = YCBCR_Y_WEIGHTS
    y = (x[:, 0:1] * a + x[:, 1:2] * b) + x[:, 2:3] * c
    return (y + YCBCR_Y_OFFSET) / 255.0


def yiq_y(x: torch.Tensor) -> torch.Tensor:
    """The Y of YIQ (0.299 R + 0.587 G + 0.114 B) of an RGB batch, on ``x``'s scale."""
    a, b, c = YIQ_Y_WEIGHTS
    return (x[:, 0:1] * a + x[:, 1:2] * b) + x[:, 2:3] * c


def psnr(
    x: torch.Tensor, ref: torch.Tensor, *, crop: int = 0, y_channel: bool = False
) -> torch.Tensor:
    """PSNR in dB of each image of ``x`` against ``ref`` (see the module notes)."""
    _check_pair(x, ref)
    x = crop_border(x.double(), crop)
    ref = crop_border(ref.double(), crop)
    if y_channel:
        x, ref = ycbcr_y(x), ycbcr_y(ref)
    mse = (x - ref).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(1.0 / (mse + PSNR_EPS))


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """MATLAB's ``fspecial('gaussian', size, sigma)``: a normalised float64 ``[size, size]``."""
    half = (size - 1) / 2.0
    r = torch.arange(size, dtype=torch.float64) - half
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma * sigma))
    g[g < torch.finfo(torch.float64).eps * g.max()] = 0.0
    return g / g.sum()


def ssim(
    x: torch.Tensor, ref: torch.Tensor, *, crop: int = 0, y_channel: bool = False
) -> torch.Tensor:
    """SSIM of each image of ``x`` against ``ref`` (see the module notes)."""
    _check_pair(x, ref)
    x = crop_border(x.double(), crop)
    ref = crop_border(ref.double(), crop)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        h, w = x.shape[-2:]
        raise DiffBIRError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (after --crop-border), "
            f"got {w}x{h}"
        )
    if y_channel:
        # The luma in single precision, as pyiqa takes it (a level at .5 rounds the way
        # float32 puts it), then widened.
        x, ref = ycbcr_y(x.float()).double(), ycbcr_y(ref.float()).double()
    x = (x * 255.0).round()
    ref = (ref * 255.0).round()
    # pyiqa's window is float32 (MATLAB's fspecial in single precision), then widened;
    # the means over it are exact to float64 rounding through the FFT, which is many
    # times faster than an 11x11 float64 convolution on the CPU and gives the same
    # 'valid' part (the window is symmetric, so the circular convolution's wrapped
    # border is exactly what 'valid' leaves out).
    window = gaussian_window(SSIM_WINDOW, SSIM_SIGMA).float().to(x)
    size = tuple(x.shape[-2:])
    spectrum = torch.fft.rfft2(window, s=size)
    edge = SSIM_WINDOW - 1

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(t) * spectrum, s=size)[..., edge:, edge:]

    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    mu_x, mu_r = blur(x), blur(ref)
    var_x = blur(x * x) - mu_x**2
    var_r = blur(ref * ref) - mu_r**2
    cov = blur(x * ref) - mu_x * mu_r
    contrast_structure = torch.relu((2.0 * cov + c2) / (var_x + var_r + c2))
    luminance = (2.0 * mu_x * mu_r + c1) / (mu_x**2 + mu_r**2 + c1)
    return (luminance * contrast_structure).mean(dim=(1, 2, 3))


def _check_pair(x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise DiffBIRError(
            f"image and reference differ in shape: {tuple(x.shape)} vs {tuple(ref.shape)}"
        )


def build(name: str, options, device: torch.device, *files):
    """The callable ``(x, ref) -> values`` of metric ``name`` under ``options``."""
    fn = {"psnr": psnr, "ssim": ssim}[name]

    def metric(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return fn(x, ref, crop=options.crop_border, y_channel=options.y_channel)

    return metric
