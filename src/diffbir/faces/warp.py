"""Affine warping that only touches the pixels it needs and does not alias.

Both alignment (photo -> 512x512 crop) and paste-back (crop -> photo) are an
affine warp. Two things make a plain ``cv2.warpAffine`` a poor fit:

- the photo may be large while the face is small, so the warp should read and
  write only the region the face covers;
- a bilinear warp that shrinks by more than ~1.5x skips source pixels and
  aliases, so the source is first shrunk with area averaging and the matrix
  adjusted to match.

Coordinates follow OpenCV: pixel centres sit at integer positions, so pixel
``i`` covers ``[i - 0.5, i + 0.5)``. Matrices are 2x3 and map source
coordinates to destination coordinates.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

BORDERS = {
    "constant": cv2.BORDER_CONSTANT,
    "reflect": cv2.BORDER_REFLECT_101,
    # Internal: for warps whose outside pixels get zero weight anyway.
    "replicate": cv2.BORDER_REPLICATE,
}

# Below this output/source scale the source is pre-shrunk with INTER_AREA.
_ANTIALIAS_BELOW = 0.67


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Return the 2x3 inverse of a 2x3 affine matrix (float64)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"expected a 2x3 affine matrix, got shape {m.shape}")
    linear_inv = np.linalg.inv(m[:, :2])
    return np.hstack([linear_inv, -linear_inv @ m[:, 2:]])


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Return the 2x3 matrix of ``outer(inner(x))``."""
    outer = np.asarray(outer, dtype=np.float64)
    inner = np.asarray(inner, dtype=np.float64)
    return np.hstack([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]])


def resize_affine(scale_x: float, scale_y: float) -> np.ndarray:
    """Matrix of a resize by (scale_x, scale_y) under the pixel-centre convention.

    A point ``x`` of the original lands at ``(x + 0.5) * s - 0.5`` in the
    resized image, which is what ``cv2.resize`` does.
    """
    return np.array(
        [[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5]],
        dtype=np.float64,
    )


def affine_scale(matrix: np.ndarray) -> float:
    """Mean linear scale of a 2x3 matrix (exact for a similarity transform)."""
    return math.sqrt(abs(float(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:, :2]))))


def map_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to an (N, 2) array of points."""
    m = np.asarray(matrix, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]


def _corner_box(matrix: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of a width x height image's outline under ``matrix``."""
    corners = np.array(
        [[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5]]
    )
    mapped = map_points(matrix, corners)
    return (
        float(mapped[:, 0].min()),
        float(mapped[:, 1].min()),
        float(mapped[:, 0].max()),
        float(mapped[:, 1].max()),
    )


def inside_source(matrix: np.ndarray, src_w: int, src_h: int, out_w: int, out_h: int):
    """Boolean (out_h, out_w) map: output pixels whose centre comes from inside the source."""
    inv = invert_affine(matrix).astype(np.float32)
    us = np.arange(out_w, dtype=np.float32)
    vs = np.arange(out_h, dtype=np.float32)[:, None]
    sx = inv[0, 0] * us + inv[0, 1] * vs + inv[0, 2]
    sy = inv[1, 0] * us + inv[1, 1] * vs + inv[1, 2]
    return (sx >= -0.5) & (sx < src_w - 0.5) & (sy >= -0.5) & (sy < src_h - 0.5)


def warp_affine(
    src: np.ndarray,
    matrix: np.ndarray,
    out_size: tuple[int, int],
    *,
    border: str = "constant",
    antialias: bool = True,
) -> np.ndarray:
    """Warp ``src`` (HW or HWC, float32) into an image of ``out_size`` = (width, height).

    ``matrix`` maps source coordinates to output coordinates. Pixels that fall
    outside the source are 0 (``border="constant"``) or mirrored
    (``border="reflect"``). With ``antialias`` a shrinking warp averages
    source pixels instead of skipping them.
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {sorted(BORDERS)}, got {border!r}")
    out_w, out_h = int(out_size[0]), int(out_size[1])
    src = np.ascontiguousarray(src, dtype=np.float32)
    m = np.asarray(matrix, dtype=np.float64)
    src_h, src_w = src.shape[:2]

    # Read only the source region that reaches the output (plus a margin for
    # the interpolation footprint). A reflected border may need pixels far from
    # that region, so with reflection the crop is used only when no reflection
    # happens at all.
    scale = affine_scale(m)
    margin = 2 + math.ceil(1.0 / max(scale, 1e-6))
    bx0, by0, bx1, by1 = _corner_box(invert_affine(m), out_w, out_h)
    x0 = max(0, math.floor(bx0) - margin)
    y0 = max(0, math.floor(by0) - margin)
    x1 = min(src_w, math.ceil(bx1) + margin + 1)
    y1 = min(src_h, math.ceil(by1) + margin + 1)
    inside = bx0 >= 0 and by0 >= 0 and bx1 <= src_w - 1 and by1 <= src_h - 1
    if x0 >= x1 or y0 >= y1:
        if border == "constant":
            channels = src.shape[2:]
            return np.zeros((out_h, out_w, *channels), dtype=np.float32)
        x0, y0, x1, y1 = 0, 0, src_w, src_h
    elif border == "reflect" and not inside:
        x0, y0, x1, y1 = 0, 0, src_w, src_h
    region = src[y0:y1, x0:x1]
    shift = np.array([[1.0, 0.0, float(x0)], [0.0, 1.0, float(y0)]])
    m = compose_affine(m, shift)

    if antialias and scale < _ANTIALIAS_BELOW:
        reg_h, reg_w = region.shape[:2]
        new_w = max(1, round(reg_w * scale))
        new_h = max(1, round(reg_h * scale))
        region = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
        m = compose_affine(m, invert_affine(resize_affine(new_w / reg_w, new_h / reg_h)))

    # A constant border is applied by pixel centre, not by interpolation: OpenCV
    # would blend the zeros into the photo's outermost pixels, and pasting such
    # a crop back would darken the photo's edge. So warp with a replicated
    # border, then zero the pixels whose centre falls outside the source.
    mode = cv2.BORDER_REPLICATE if border == "constant" else BORDERS[border]
    warped = cv2.warpAffine(region, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=mode)
    if border == "constant":
        warped[~inside_source(matrix, src_w, src_h, out_w, out_h)] = 0.0
    # cv2 drops a trailing channel axis of size 1; keep the caller's layout.
    if src.ndim == 3 and warped.ndim == 2:
        warped = warped[:, :, None]
    return warped
