"""Temporal consistency as the video restoration papers measure it, against a clean clip.

* :func:`warping_error` (``E_warp``): the mean squared difference between each output
  frame and the previous output frame warped onto it with the *clean* clip's backward
  flow, on the pixels where the clean clip's forward-backward check says the flow holds
  (occlusions masked); values in [0, 1], pairs across a cut left out;
* :func:`flicker`: the same warped temporal difference of the output against the clean
  clip's, ``|(out_t - W out_t-1) - (clean_t - W clean_t-1)|``;
* :func:`flow_difference` (``tOF``): the mean end-point difference (pixels) between the
  output's backward flow and the clean clip's;
* :func:`mean_psnr`: the mean per-frame PSNR against the clean frames.

Used by ``benchmarks/bench_video.py`` and the tests of the consistency bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from diffbir.video.flow import consistency_mask, dis_flow, warp_image


@dataclass
class PairMotion:
    """Frame ``t`` of the clean clip against ``t - 1``: backward flow and occlusion mask."""

    t: int
    backward: np.ndarray  # [H, W, 2] float32
    mask: np.ndarray  # [H, W] float32, 1 where the flow holds


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def reference_motion(clean: list[np.ndarray], cuts: tuple[int, ...] = ()) -> list[PairMotion]:
    """The clean clip's motion for every pair of consecutive frames (RGB uint8) but those
    that start a scene (``cuts``: first frames of scenes)."""
    pairs = []
    for t in range(1, len(clean)):
        if t in cuts:
            continue
        a, b = _gray(clean[t - 1]), _gray(clean[t])
        backward, forward = dis_flow(b, a), dis_flow(a, b)
        pairs.append(PairMotion(t, backward, consistency_mask(backward, forward)))
    return pairs


def _float(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [x.astype(np.float32) / 255.0 for x in frames]


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    area = max(float(mask.sum()) * values.shape[-1], 1.0)
    return float((values * mask[..., None]).sum() / area)


def warping_error(frames: list[np.ndarray], motion: list[PairMotion]) -> float:
    """``E_warp`` of ``frames`` (RGB uint8, the clean clip's length) along ``motion``."""
    f = _float(frames)
    errors = [
        _masked_mean((f[p.t] - warp_image(f[p.t - 1], p.backward)) ** 2, p.mask) for p in motion
    ]
    return float(np.mean(errors))


def flicker(frames: list[np.ndarray], clean: list[np.ndarray], motion: list[PairMotion]) -> float:
    """The mean absolute warped temporal difference of ``frames`` against ``clean``'s."""
    f, c = _float(frames), _float(clean)
    values = []
    for p in motion:
        out = f[p.t] - warp_image(f[p.t - 1], p.backward)
        ref = c[p.t] - warp_image(c[p.t - 1], p.backward)
        values.append(_masked_mean(np.abs(out - ref), p.mask))
    return float(np.mean(values))


def flow_difference(frames: list[np.ndarray], motion: list[PairMotion]) -> float:
    """``tOF``: mean end-point distance between ``frames``' flow and the clean clip's."""
    values = []
    for p in motion:
        flow = dis_flow(_gray(frames[p.t]), _gray(frames[p.t - 1]))
        values.append(float(np.linalg.norm(flow - p.backward, axis=-1).mean()))
    return float(np.mean(values))


def mean_psnr(frames: list[np.ndarray], clean: list[np.ndarray]) -> float:
    """The mean per-frame PSNR (dB) of ``frames`` against ``clean``."""
    values = []
    for x, y in zip(_float(frames), _float(clean), strict=True):
        values.append(10 * np.log10(1.0 / max(float(np.mean((x - y) ** 2)), 1e-12)))
    return float(np.mean(values))
