"""Blur kernels of the degradation model (Real-ESRGAN / BasicSR family), as numpy arrays.

Every kernel is a float64 ``[K, K]`` array that sums to 1, indexed ``[y, x]`` with the
centre at ``(K // 2, K // 2)``. The shaped kernels evaluate a quadratic form
``q(x, y) = [x y] S^-1 [x y]^T`` where ``S = R diag(sx^2, sy^2) R^T`` is the covariance
rotated by ``theta`` (radians, counter-clockwise in (x, y)):

* Gaussian:             ``exp(-q / 2)``
* generalized Gaussian: ``exp(-q^beta / 2)``   (beta = 1 is the Gaussian)
* plateau:              ``1 / (1 + q^beta)``

The sinc kernel is the circularly symmetric ideal low-pass filter
``w J1(w r) / (2 pi r)`` of cutoff ``w`` (radians per pixel, pi is Nyquist).

Random draws take an explicit ``numpy.random.Generator``: nothing here touches global RNGs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

KERNEL_TYPES = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)


def _check_size(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")


def mesh_grid(kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(xx, yy)``: integer pixel offsets from the centre, each ``[K, K]`` float64."""
    _check_size(kernel_size)
    half = kernel_size // 2
    axis = np.arange(-half, half + 1, dtype=np.float64)
    xx, yy = np.meshgrid(axis, axis)
    return xx, yy


def covariance_matrix(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """The 2x2 covariance ``R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T``."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T


def _quadratic_form(kernel_size: int, sigma_x: float, sigma_y: float | None, theta: float):
    # Isotropic kernels ignore sigma_y and theta (the published convention).
    if sigma_y is None:
        sigma_y, theta = sigma_x, 0.0
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"kernel sigmas must be positive, got {sigma_x}, {sigma_y}")
    inv = np.linalg.inv(covariance_matrix(sigma_x, sigma_y, theta))
    xx, yy = mesh_grid(kernel_size)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def _normalise(kernel: np.ndarray) -> np.ndarray:
    return kernel / kernel.sum()


def gaussian_kernel(
    kernel_size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0
) -> np.ndarray:
    """Bivariate Gaussian kernel; isotropic when ``sigma_y`` is None."""
    q = _quadratic_form(kernel_size, sigma_x, sigma_y, theta)
    return _normalise(np.exp(-0.5 * q))


def generalized_gaussian_kernel(
    kernel_size: int,
    sigma_x: float,
    sigma_y: float | None = None,
    theta: float = 0.0,
    beta: float = 1.0,
) -> np.ndarray:
    """Bivariate generalized Gaussian ``exp(-q^beta / 2)``; isotropic when ``sigma_y`` is None."""
    q = _quadratic_form(kernel_size, sigma_x, sigma_y, theta)
    return _normalise(np.exp(-0.5 * np.power(q, beta)))


def plateau_kernel(
    kernel_size: int,
    sigma_x: float,
    sigma_y: float | None = None,
    theta: float = 0.0,
    beta: float = 1.0,
) -> np.ndarray:
    """Bivariate plateau kernel ``1 / (1 + q^beta)``; isotropic when ``sigma_y`` is None."""
    q = _quadratic_form(kernel_size, sigma_x, sigma_y, theta)
    return _normalise(1.0 / (np.power(q, beta) + 1.0))


def _bessel_j1(x: np.ndarray) -> np.ndarray:
    # torch ships a double-precision J1 (Cephes); it saves a scipy dependency.
    import torch

    return torch.special.bessel_j1(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def sinc_kernel(cutoff: float, kernel_size: int, pad_to: int = 0) -> np.ndarray:
    """Circular low-pass (2-D sinc) kernel of ``cutoff`` radians, zero-padded to ``pad_to``."""
    _check_size(kernel_size)
    if not 0 < cutoff <= math.pi + 1e-12:
        raise ValueError(f"sinc cutoff must be in (0, pi], got {cutoff}")
    xx, yy = mesh_grid(kernel_size)
    r = np.sqrt(xx * xx + yy * yy)
    centre = kernel_size // 2
    r[centre, centre] = 1.0  # placeholder; the centre takes the limit value below
    kernel = cutoff * _bessel_j1(cutoff * r) / (2.0 * math.pi * r)
    kernel[centre, centre] = cutoff**2 / (4.0 * math.pi)  # lim r->0 of w J1(w r) / (2 pi r)
    kernel = _normalise(kernel)
    return pad_kernel(kernel, pad_to) if pad_to > kernel_size else kernel


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a square odd kernel to ``size`` x ``size`` (no-op when already that large)."""
    k = kernel.shape[0]
    if size <= k:
        return kernel
    _check_size(size)
    p = (size - k) // 2
    return np.pad(kernel, ((p, p), (p, p)))


def delta_kernel(kernel_size: int) -> np.ndarray:
    """The identity kernel: filtering with it leaves an image unchanged."""
    _check_size(kernel_size)
    kernel = np.zeros((kernel_size, kernel_size))
    kernel[kernel_size // 2, kernel_size // 2] = 1.0
    return kernel


def _draw_beta(rng: np.random.Generator, beta_range: Sequence[float]) -> float:
    # Half the draws below 1 (heavier tails), half above (flatter top), as Real-ESRGAN does.
    lo, hi = float(beta_range[0]), float(beta_range[1])
    if rng.random() < 0.5:
        return float(rng.uniform(lo, 1.0))
    return float(rng.uniform(1.0, hi))


def random_mixed_kernel(
    rng: np.random.Generator,
    kernel_list: Sequence[str],
    kernel_prob: Sequence[float],
    kernel_size: int = 21,
    sigma_x_range: Sequence[float] = (0.6, 5.0),
    sigma_y_range: Sequence[float] | None = None,
    rotation_range: Sequence[float] = (-math.pi, math.pi),
    betag_range: Sequence[float] = (0.5, 8.0),
    betap_range: Sequence[float] = (0.5, 8.0),
) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw a kernel type with ``kernel_prob``, then its parameters uniformly in their ranges.

    Returns ``(kernel, params)`` where ``params`` records ``type``, ``sigma_x``, ``sigma_y``,
    ``theta`` and ``beta`` (None for the Gaussian types). Isotropic types have
    ``sigma_y == sigma_x`` and ``theta == 0``.
    """
    unknown = [t for t in kernel_list if t not in KERNEL_TYPES]
    if unknown:
        raise ValueError(f"unknown kernel type(s) {unknown}; choose from {list(KERNEL_TYPES)}")
    prob = np.asarray(kernel_prob, dtype=np.float64)
    kind = str(kernel_list[int(rng.choice(len(kernel_list), p=prob / prob.sum()))])
    sigma_y_range = sigma_x_range if sigma_y_range is None else sigma_y_range

    sigma_x = float(rng.uniform(sigma_x_range[0], sigma_x_range[1]))
    if kind.endswith("aniso"):
        sigma_y = float(rng.uniform(sigma_y_range[0], sigma_y_range[1]))
        theta = float(rng.uniform(rotation_range[0], rotation_range[1]))
    else:
        sigma_y, theta = sigma_x, 0.0

    beta: float | None = None
    if kind.startswith("generalized"):
        beta = _draw_beta(rng, betag_range)
        kernel = generalized_gaussian_kernel(kernel_size, sigma_x, sigma_y, theta, beta)
    elif kind.startswith("plateau"):
        beta = _draw_beta(rng, betap_range)
        kernel = plateau_kernel(kernel_size, sigma_x, sigma_y, theta, beta)
    else:
        kernel = gaussian_kernel(kernel_size, sigma_x, sigma_y, theta)
    params = {"type": kind, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta, "beta": beta}
    return kernel, params
