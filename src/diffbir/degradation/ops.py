"""Image operations of the degradation model, batched on NCHW RGB float tensors in [0, 1].

Per-sample parameters (kernels, noise levels, JPEG qualities) are given per image of the
batch, so a whole batch degrades in one call on whatever device it lives on. Random
fields come from a supplied ``torch.Generator`` on that device, never the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

RESIZE_MODES = ("area", "bilinear", "bicubic", "nearest")

# Above this kernel size a blur is cheaper through the FFT than as a direct convolution
# (measured on CPU at 512x512; see benchmarks/bench_degradation.py).
FFT_MIN_KERNEL = 13

# ITU-R BT.601 luma weights: the "gray" that gray noise is computed on.
_LUMA = (0.299, 0.587, 0.114)


def _per_sample(values, batch: int, device, dtype) -> torch.Tensor:
    """A length-``batch`` tensor from a scalar, a sequence or a tensor."""
    t = torch.as_tensor(values, dtype=dtype, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"expected {batch} per-sample values, got {t.numel()}")
    return t


def _pad(images: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    # Reflection (cv2's BORDER_REFLECT_101) needs the pad smaller than the image; tiny
    # images (after a strong downsample) fall back to edge replication.
    h, w = images.shape[-2:]
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(images, (pw, pw, ph, ph), mode=mode)


def filter2d(images: torch.Tensor, kernels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Correlate each image with its kernel (as ``cv2.filter2D``), reflect-padded, same size.

    ``kernels`` is ``[K, K]`` (shared) or ``[B, K, K]`` (one per image), K odd. Large
    kernels go through the FFT, small ones through a grouped convolution.
    """
    b, c, h, w = images.shape
    kernels = torch.as_tensor(kernels, dtype=images.dtype, device=images.device)
    if kernels.ndim == 2:
        kernels = kernels.expand(b, -1, -1)
    if kernels.ndim != 3 or kernels.shape[0] != b or kernels.shape[1] != kernels.shape[2]:
        raise ValueError(f"kernels must be [K, K] or [{b}, K, K], got {tuple(kernels.shape)}")
    k = kernels.shape[-1]
    if k % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {k}")
    p = k // 2
    padded = _pad(images, p, p)
    if k >= FFT_MIN_KERNEL:
        return _filter2d_fft(padded, kernels, h, w)
    weight = kernels.reshape(b, 1, k, k).repeat_interleave(c, dim=0)
    out = F.conv2d(padded.reshape(1, b * c, h + 2 * p, w + 2 * p), weight, groups=b * c)
    return out.reshape(b, c, h, w)


def _fft_size(n: int) -> int:
    """The smallest 5-smooth integer >= n: FFT lengths with large prime factors are slow."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _filter2d_fft(padded: torch.Tensor, kernels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # Circular convolution of the padded image with the flipped kernel; the window that
    # never wraps around is exactly the correlation over the original image area (extra
    # zero padding up to a fast FFT length keeps that window wrap-free).
    hp, wp = (_fft_size(n) for n in padded.shape[-2:])
    k = kernels.shape[-1]
    spectrum = torch.fft.rfft2(padded, s=(hp, wp))
    kspec = torch.fft.rfft2(kernels.flip(-1, -2), s=(hp, wp)).unsqueeze(1)
    full = torch.fft.irfft2(spectrum * kspec, s=(hp, wp))
    return full[..., k - 1 : k - 1 + h, k - 1 : k - 1 + w].contiguous()


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize to ``size`` = (height, width) with ``area``, ``bilinear``, ``bicubic`` or ``nearest``.

    Bilinear and bicubic sample at pixel centres without antialiasing (as OpenCV's
    ``INTER_LINEAR``/``INTER_CUBIC`` and Real-ESRGAN do), so a strong downscale aliases:
    that is part of the degradation.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose from {list(RESIZE_MODES)}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize target must be at least 1x1, got {h}x{w}")
    if (h, w) == tuple(images.shape[-2:]):
        return images
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(images, size=(h, w), mode=mode, align_corners=False)
    return F.interpolate(images, size=(h, w), mode=mode)


def add_gaussian_noise(
    images: torch.Tensor,
    sigma,
    gray=False,
    *,
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Add zero-mean Gaussian noise of std ``sigma`` (per image, on the 0..255 scale).

    ``gray`` (per image) draws one noise field shared by the three channels.
    """
    b = images.shape[0]
    sigma = _per_sample(sigma, b, images.device, images.dtype).view(b, 1, 1, 1)
    gray = _per_sample(gray, b, images.device, torch.bool).view(b, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    noise = torch.where(gray, noise[:, :1].expand_as(noise), noise)
    out = images + noise * (sigma / 255.0)
    return out.clamp(0.0, 1.0) if clip else out


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """Luma (BT.601) of RGB images, ``[B, 1, H, W]``."""
    r, g, b = images.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def add_poisson_noise(
    images: torch.Tensor,
    scale,
    gray=False,
    *,
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Add Poisson (shot) noise, scaled by ``scale`` per image; ``gray`` per image.

    As in Real-ESRGAN, the photon count of a pixel is its 8-bit level times the number of
    distinct levels in the image rounded up to a power of two; the noise is the
    normalised Poisson draw minus the image, times ``scale``.
    """
    b = images.shape[0]
    scale = _per_sample(scale, b, images.device, images.dtype).view(b, 1, 1, 1)
    gray = _per_sample(gray, b, images.device, torch.bool).view(b, 1, 1, 1)
    source = torch.where(gray, to_gray(images).expand_as(images), images)
    levels = (source.clamp(0, 1) * 255.0).round()
    source = levels / 255.0
    # Distinct 8-bit levels per image, by a histogram (torch.unique sorts: far slower).
    offsets = torch.arange(b, device=images.device).view(b, 1) * 256
    hist = torch.bincount((levels.long().view(b, -1) + offsets).view(-1), minlength=256 * b)
    counts = (hist.view(b, 256) > 0).sum(dim=1).clamp_min(1).to(images.dtype)
    vals = torch.exp2(torch.ceil(torch.log2(counts))).view(b, 1, 1, 1)
    noise = torch.poisson(source * vals, generator=generator) / vals - source
    noise = torch.where(gray, noise[:, :1].expand_as(noise), noise)
    out = images + noise * scale
    return out.clamp(0.0, 1.0) if clip else out


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """One ``[3, H, W]`` image in [0, 1] to a rounded ``uint8`` HWC RGB array."""
    arr = (image.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def jpeg_encode(image: torch.Tensor, quality: int) -> bytes:
    """Encode one ``[3, H, W]`` RGB image as a baseline JPEG (4:2:0) at ``quality`` 1..100."""
    quality = int(quality)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    bgr = np.ascontiguousarray(to_uint8_hwc(image)[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:  # pragma: no cover - OpenCV only fails on impossible inputs
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def jpeg_decode(data: bytes) -> torch.Tensor:
    """Decode JPEG bytes to a ``[3, H, W]`` float32 RGB tensor in [0, 1]."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    rgb = np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))
    return torch.from_numpy(rgb).float() / 255.0


def jpeg_compress(images: torch.Tensor, quality: Sequence[int] | int) -> torch.Tensor:
    """Real JPEG encode/decode round trip of each image at its quality (per image).

    The codec runs on the CPU (OpenCV's libjpeg); batches on another device are moved
    there and back, which costs little next to the codec itself. A quality of 0 or None
    for an image leaves it untouched.
    """
    b = images.shape[0]
    qualities = list(quality) if isinstance(quality, (list, tuple)) else [quality] * b
    if len(qualities) != b:
        raise ValueError(f"expected {b} JPEG qualities, got {len(qualities)}")
    out = []
    for img, q in zip(images, qualities):
        if not q:
            out.append(img)
            continue
        out.append(jpeg_decode(jpeg_encode(img, int(q))).to(images.device, images.dtype))
    return torch.stack(out)


def gaussian_kernel_1d(size: int, sigma: float = 0.0) -> torch.Tensor:
    """1-D Gaussian of odd ``size``; ``sigma <= 0`` picks OpenCV's default for the size."""
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def usm_sharpen(
    images: torch.Tensor, weight: float = 0.5, threshold: float = 10.0, radius: int = 50
) -> torch.Tensor:
    """Unsharp-mask sharpening of the HQ target (Real-ESRGAN's USM).

    ``sharp = clip(img + weight * (img - blur(img)))``, blended in only where the detail
    ``|img - blur(img)|`` exceeds ``threshold`` (0..255 scale), with a soft (blurred) mask.
    The blur is a Gaussian of size ``radius`` (made odd) and OpenCV's default sigma.
    """
    size = radius + 1 if radius % 2 == 0 else radius
    kernel_1d = gaussian_kernel_1d(size)
    # The 2-D kernel through filter2d's FFT path beats a separable pair of thin convs.
    kernel = torch.outer(kernel_1d, kernel_1d)
    blurred = filter2d(images, kernel)
    residual = images - blurred
    mask = (residual.abs() * 255.0 > threshold).to(images.dtype)
    soft_mask = filter2d(mask, kernel)
    sharp = (images + weight * residual).clamp(0.0, 1.0)
    return soft_mask * sharp + (1.0 - soft_mask) * images


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit image."""
    return (images.clamp(0.0, 1.0) * 255.0).round() / 255.0
