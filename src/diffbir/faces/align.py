"""Align a face to the FFHQ 512x512 five-point template.

Images at this boundary are numpy arrays, HWC, float32, RGB, values in [0, 1]
(see :mod:`diffbir.faces.arrays` for converters to and from NCHW tensors).
Landmarks are (5, 2) arrays of (x, y) pixel coordinates with pixel centres at
integer positions (OpenCV's convention), in the order of
:data:`FFHQ_TEMPLATE_512`.
"""

from __future__ import annotations

import numpy as np

from diffbir.faces.warp import invert_affine, warp_affine

__all__ = ["FFHQ_TEMPLATE_512", "align_face", "estimate_similarity", "invert_affine"]

# Five points of a 512x512 FFHQ-aligned face, in image coordinates: the eye on
# the left of the image, the eye on the right, the nose tip, the mouth corner
# on the left, the mouth corner on the right. These are the values that the
# face restoration models (GFPGAN, CodeFormer, DiffBIR's face model) were
# trained with, as published in facexlib's FaceRestoreHelper:
# https://github.com/xinntao/facexlib/blob/master/facexlib/utils/face_restoration_helper.py
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
FFHQ_TEMPLATE_512.setflags(write=False)


def estimate_similarity(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation).

    Umeyama's closed form ("Least-squares estimation of transformation
    parameters between two point patterns", IEEE TPAMI 1991), restricted to
    proper rotations so a face is never mirrored. Chosen over
    ``cv2.estimateAffinePartial2D(method=LMEDS)`` because it is exact and
    deterministic for five points (LMEDS samples random subsets), and weights
    all five landmarks equally.

    Returns the 2x3 float64 matrix ``M`` with ``dst ≈ M[:, :2] @ src + M[:, 2]``.
    """
    src = np.asarray(src_pts, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst_pts, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(
            f"need two equal-length sets of at least 2 points, got {src.shape} and {dst.shape}"
        )
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("source points coincide; no similarity transform is defined")

    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0  # a reflection would fit better; take the best rotation instead
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular * signs).sum() / src_var)
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def face_template(size: int = 512, *, scale: float = 1.0) -> np.ndarray:
    """The FFHQ template for a ``size`` x ``size`` crop, shrunk about the centre by ``scale``.

    ``scale > 1`` leaves more context around the face (the crop covers
    ``scale`` times the area side of the standard crop).
    """
    if size <= 0 or scale <= 0:
        raise ValueError(f"size and scale must be positive, got {size} and {scale}")
    centre = (size - 1) / 2.0
    template = FFHQ_TEMPLATE_512 * (size / 512.0)
    return centre + (template - centre) / scale


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int = 512,
    *,
    scale: float = 1.0,
    border: str = "constant",
) -> tuple[np.ndarray, np.ndarray]:
    """Cut out a face and warp it onto the FFHQ template.

    Args:
        image: HWC float32 RGB in [0, 1].
        landmarks: (5, 2) points in template order (left-of-image eye first).
        size: side of the square crop.
        scale: enlarge the crop by this factor around its centre (more context).
        border: ``"constant"`` fills outside the photo with 0, ``"reflect"`` mirrors it.

    Returns:
        ``(crop, affine)``: the ``size`` x ``size`` x C crop (float32) and the
        2x3 matrix mapping photo coordinates to crop coordinates. Pass it to
        :func:`diffbir.faces.paste.paste_face` to put a restored crop back.
    """
    if border not in ("constant", "reflect"):
        raise ValueError(f"border must be 'constant' or 'reflect', got {border!r}")
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), got {points.shape}")
    affine = estimate_similarity(points, face_template(size, scale=scale))
    crop = warp_affine(image, affine, (size, size), border=border)
    return crop, affine
