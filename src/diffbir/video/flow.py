"""Motion between input frames: OpenCV's DIS optical flow, warping, where it is reliable,
and scene cuts.

Flow is computed on the *input* frames (grey, at most :data:`FLOW_SIDE` pixels on the
long side, lightly blurred so that film grain does not pass for motion), both ways:
``backward`` (current -> previous: where each pixel of the current frame was) warps the
previous frame onto the current one; the forward-backward check of Sundaram et al.
(2010, "Dense point trajectories by GPU-accelerated large displacement optical flow")
marks the pixels whose two flows agree, the others (occlusions, a wrong match) get no
propagation. A frame where few pixels are both consistent and photometrically matched
after the warp starts a new scene (:func:`is_cut`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Flow is computed with the long side at most this many pixels (it is resized to the
#: latent grid, 1/8 of the output, anyway).
FLOW_SIDE = 512


@dataclass
class Motion:
    """The current frame against the previous one, on the flow grid (``[h, w]``):
    ``backward`` in pixels of that grid, ``mask`` in [0, 1] (1: propagate), and the
    share of matched pixels (``matched``; low at a cut)."""

    backward: np.ndarray  # [h, w, 2] float32, (dx, dy)
    mask: np.ndarray  # [h, w] float32
    matched: float


def flow_gray(rgb: np.ndarray, side: int = FLOW_SIDE) -> np.ndarray:
    """The grey uint8 image flow is computed on: at most ``side`` long, grain blurred."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(gray, (0, 0), 1.0)


def _dis() -> cv2.DISOpticalFlow:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setUseSpatialPropagation(True)
    return dis


def dis_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """DIS flow ``f`` with ``first(x) ~ second(x + f(x))`` (grey uint8 images of one size)."""
    h, w = first.shape
    if min(h, w) < 16:  # DIS needs a few patches; tiny frames are upscaled for it
        scale = 16.0 / min(h, w)
        size = (round(w * scale), round(h * scale))
        big = dis_flow(cv2.resize(first, size), cv2.resize(second, size))
        return cv2.resize(big, (w, h), interpolation=cv2.INTER_LINEAR) / scale
    return _dis().calc(first, second, None).astype(np.float32)


def warp_image(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``x + flow(x)`` (bilinear, edges replicated): the previous
    frame moved onto the current one when ``flow`` is the backward flow."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        image,
        grid_x + flow[..., 0],
        grid_y + flow[..., 1],
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def consistency_mask(
    backward: np.ndarray, forward: np.ndarray, alpha: float = 0.01, beta: float = 0.5
) -> np.ndarray:
    """1 where the backward flow and the forward flow at its end cancel out
    (``|b + f(x + b)|^2 < alpha (|b|^2 + |f(x + b)|^2) + beta``) and the end is inside
    the frame; 0 elsewhere (occluded, or unreliable)."""
    h, w = backward.shape[:2]
    f_at = warp_image(forward, backward)
    diff = ((backward + f_at) ** 2).sum(-1)
    bound = alpha * ((backward**2).sum(-1) + (f_at**2).sum(-1)) + beta
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    x, y = grid_x + backward[..., 0], grid_y + backward[..., 1]
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    return ((diff < bound) & inside).astype(np.float32)


def motion(previous: np.ndarray, current: np.ndarray, *, tolerance: float = 12.0) -> Motion:
    """The :class:`Motion` of grey frame ``current`` against ``previous`` (both
    :func:`flow_gray`). ``tolerance``: grey levels within which a warped pixel counts as
    matched (the mask also drops pixels that do not match)."""
    backward = dis_flow(current, previous)
    forward = dis_flow(previous, current)
    mask = consistency_mask(backward, forward)
    warped = warp_image(previous, backward)
    close = np.abs(warped.astype(np.float32) - current.astype(np.float32)) <= tolerance
    mask = mask * close
    return Motion(backward, mask.astype(np.float32), float(mask.mean()))


def is_cut(m: Motion, threshold: float) -> bool:
    """A new scene: fewer than ``threshold`` of the pixels are matched after the warp."""
    return m.matched < threshold


def resize_motion(m: Motion, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The backward flow (in pixels of the new grid) and the mask resized to ``hw``."""
    h, w = hw
    fh, fw = m.mask.shape
    flow = cv2.resize(m.backward, (w, h), interpolation=cv2.INTER_LINEAR)
    flow[..., 0] *= w / fw
    flow[..., 1] *= h / fh
    mask = cv2.resize(m.mask, (w, h), interpolation=cv2.INTER_AREA)
    return flow, np.clip(mask, 0.0, 1.0)
