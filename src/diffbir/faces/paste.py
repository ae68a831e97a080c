"""Paste a restored, aligned face back into its photo through a feathered mask.

Images are numpy HWC float32 RGB in [0, 1]. The ``affine`` is the one
:func:`diffbir.faces.align.align_face` returned (photo -> crop coordinates),
for the photo the landmarks were found in. When the background has been
upscaled since (the restored background is larger), pass the factor as
``upscale`` and the matrix is adjusted.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from diffbir.faces.warp import (
    compose_affine,
    inside_source,
    invert_affine,
    resize_affine,
    warp_affine,
)

__all__ = ["face_alpha", "paste_face", "upscale_affine"]


def upscale_affine(affine: np.ndarray, upscale: float) -> np.ndarray:
    """Adapt a photo->crop matrix to the same photo resized by ``upscale``.

    Uses the pixel-centre convention of ``cv2.resize``: a point ``x`` of the
    detection image is at ``(x + 0.5) * upscale - 0.5`` in the upscaled one.
    """
    if upscale <= 0:
        raise ValueError(f"upscale must be positive, got {upscale}")
    if upscale == 1:
        return np.asarray(affine, dtype=np.float64)
    to_detection = invert_affine(resize_affine(upscale, upscale))
    return compose_affine(affine, to_detection)


def _face_region(
    crop_to_photo: np.ndarray, crop_w: int, crop_h: int, photo_w: int, photo_h: int
) -> tuple[int, int, int, int] | None:
    """Integer box (x0, y0, x1, y1) of the photo that the crop covers, or None."""
    corners = np.array(
        [[-0.5, -0.5], [crop_w - 0.5, -0.5], [-0.5, crop_h - 0.5], [crop_w - 0.5, crop_h - 0.5]]
    )
    mapped = corners @ crop_to_photo[:, :2].T + crop_to_photo[:, 2]
    x0 = max(0, math.floor(mapped[:, 0].min()) - 1)
    y0 = max(0, math.floor(mapped[:, 1].min()) - 1)
    x1 = min(photo_w, math.ceil(mapped[:, 0].max()) + 2)
    y1 = min(photo_h, math.ceil(mapped[:, 1].max()) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def _auto_feather(inside: np.ndarray) -> int:
    """Feather width from the face's area in the photo: 1/20 of its side."""
    return max(1, round(math.sqrt(float(inside.sum())) / 20.0))


def _feathered(inside: np.ndarray, feather: int) -> np.ndarray:
    """Erode a 0/1 mask by ``feather`` then blur it by the same radius.

    The erosion's footprint is a square of side ``2 * feather + 1`` and the
    blur is three box filters whose radii add up to ``feather`` (close to a
    Gaussian, and as fast for a wide feather as for a narrow one), so the
    blurred mask is exactly 0 wherever ``inside`` is 0: no pixel outside the
    crop gets any weight.
    """
    if feather <= 0:
        return inside
    side = 2 * feather + 1
    kernel = np.ones((side, side), np.uint8)
    # Erosion treats the region's border as "inside", so a face cut by the
    # photo's edge is not faded out along that edge.
    blurred = cv2.erode(inside, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1.0)
    for i in range(3):
        radius = (feather + i) // 3
        if radius > 0:
            box = 2 * radius + 1
            blurred = cv2.blur(blurred, (box, box), borderType=cv2.BORDER_REPLICATE)
    # A normalised blur of an all-ones patch is 1 only up to rounding; make it exact
    # so the face's interior is copied, not mixed.
    blurred[blurred > 1.0 - 1e-5] = 1.0
    return blurred


def face_alpha(
    photo_size: tuple[int, int],
    crop_size: tuple[int, int],
    affine: np.ndarray,
    *,
    feather: int | None = None,
    mask: np.ndarray | None = None,
    upscale: float = 1.0,
) -> np.ndarray:
    """Blend weight of a pasted face over the whole photo, HxW float32 in [0, 1].

    ``photo_size`` and ``crop_size`` are (height, width). ``mask`` is an
    optional crop-sized weight in [0, 1] (e.g. a face-parsing mask) applied on
    top of the feathered crop outline. This is the weight
    :func:`paste_face` uses; it is exposed so callers and tests can see where
    the feather band lies.
    """
    photo_h, photo_w = photo_size
    alpha = np.zeros((photo_h, photo_w), np.float32)
    found = _alpha_in_region(photo_size, crop_size, affine, feather, mask, upscale)
    if found is not None:
        (x0, y0, x1, y1), region_alpha = found
        alpha[y0:y1, x0:x1] = region_alpha
    return alpha


def _alpha_in_region(
    photo_size: tuple[int, int],
    crop_size: tuple[int, int],
    affine: np.ndarray,
    feather: int | None,
    mask: np.ndarray | None,
    upscale: float,
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    photo_h, photo_w = photo_size
    crop_h, crop_w = crop_size
    crop_to_photo = invert_affine(upscale_affine(affine, upscale))
    box = _face_region(crop_to_photo, crop_w, crop_h, photo_w, photo_h)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    to_region = compose_affine(np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]]), crop_to_photo)
    out_size = (x1 - x0, y1 - y0)
    # 1 where the pixel centre maps inside the crop, 0 elsewhere.
    inside = inside_source(to_region, crop_w, crop_h, *out_size).astype(np.float32)
    if feather is None:
        feather = _auto_feather(inside)
    if feather < 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    alpha = _feathered(inside, int(feather))
    if mask is not None:
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape[:2] != (crop_h, crop_w):
            raise ValueError(f"mask shape {mask.shape[:2]} differs from the crop's {crop_size}")
        alpha = alpha * warp_affine(
            np.clip(mask.reshape(crop_h, crop_w), 0, 1), to_region, out_size
        )
    return box, np.clip(alpha, 0.0, 1.0)


def _extend_beyond_photo(
    face: np.ndarray, photo_to_crop: np.ndarray, photo_w: int, photo_h: int
) -> np.ndarray:
    """Overwrite crop pixels that lie outside the photo with their valid neighbours.

    Those pixels held the alignment's fill (zeros, say) and whatever the model
    made of it; the photo's outermost pixels interpolate between them and real
    ones, which would leave a dark rim along the photo's edge. A normalised
    5x5 average of the valid pixels reaches every crop pixel the paste reads.
    """
    crop_h, crop_w = face.shape[:2]
    valid = inside_source(photo_to_crop, photo_w, photo_h, crop_w, crop_h)
    if valid.all():
        return face
    weight = valid.astype(np.float32)
    total = cv2.boxFilter(face * weight[:, :, None], -1, (5, 5), normalize=False)
    count = cv2.boxFilter(weight, -1, (5, 5), normalize=False)
    if total.ndim == 2:
        total = total[:, :, None]
    filled = total / np.maximum(count, 1e-6)[:, :, None]
    return np.where(valid[:, :, None], face, filled).astype(np.float32)


def paste_face(
    background: np.ndarray,
    restored_face: np.ndarray,
    affine: np.ndarray,
    *,
    feather: int | None = None,
    mask: np.ndarray | None = None,
    upscale: float = 1.0,
) -> np.ndarray:
    """Return ``background`` with ``restored_face`` warped back in and alpha-blended.

    Args:
        background: HWC float32 photo (the restored background). Not modified.
        restored_face: the aligned crop after restoration, same size as the crop
            ``affine`` was made for.
        affine: photo -> crop matrix from :func:`~diffbir.faces.align.align_face`.
        feather: width in photo pixels of the erosion and of the blur that
            soften the crop's outline; ``None`` picks 1/20 of the face's side.
        mask: optional crop-sized weight in [0, 1] multiplied into the blend.
        upscale: the background's size over the size of the image the
            landmarks were found in.

    Faces partly outside the photo are clipped; several faces are pasted by
    calling this once per face.
    """
    background = np.asarray(background, dtype=np.float32)
    face = np.asarray(restored_face, dtype=np.float32)
    if background.ndim != 3 or face.ndim != 3 or background.shape[2] != face.shape[2]:
        raise ValueError(
            f"background {background.shape} and face {face.shape} must be HWC "
            "with the same number of channels"
        )
    result = background.copy()
    found = _alpha_in_region(background.shape[:2], face.shape[:2], affine, feather, mask, upscale)
    if found is None:
        return result
    (x0, y0, x1, y1), alpha = found
    photo_to_crop = upscale_affine(affine, upscale)
    face = _extend_beyond_photo(face, photo_to_crop, background.shape[1], background.shape[0])
    crop_to_photo = invert_affine(photo_to_crop)
    to_region = compose_affine(np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]]), crop_to_photo)
    # Pixels outside the crop get zero weight, so the cheap border will do.
    warped = warp_affine(face, to_region, (x1 - x0, y1 - y0), border="replicate")
    region = result[y0:y1, x0:x1]
    # region += alpha * (warped - region), in place.
    warped -= region
    warped *= alpha[:, :, None]
    region += warped
    return result
