"""Restore the faces of a whole photo: detect, choose, align, restore, paste back.

This is the geometry of ``--task face-whole`` with the restoration left to a
callable, so the pipeline decides which models run (and how to batch them)
while this module owns where each face comes from and goes back to. Images
are numpy HWC float32 RGB in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffbir.faces.align import align_face
from diffbir.faces.detect import Face, FaceDetector, select_faces
from diffbir.faces.paste import paste_face

__all__ = ["RestoredFace", "WholePhotoResult", "restore_faces_in_photo"]


@dataclass(frozen=True)
class RestoredFace:
    """One face: its detection, aligned crop, photo->crop matrix and restored crop."""

    face: Face
    crop: np.ndarray
    affine: np.ndarray
    restored: np.ndarray


@dataclass(frozen=True)
class WholePhotoResult:
    """The final image and the faces pasted into it (empty: no face was found)."""

    image: np.ndarray
    faces: list[RestoredFace]


def _upscale_between(image: np.ndarray, background: np.ndarray) -> float:
    sy = background.shape[0] / image.shape[0]
    sx = background.shape[1] / image.shape[1]
    # Sizes are rounded to whole pixels, so allow one pixel of difference.
    if abs(sx - sy) * max(image.shape[:2]) > 1.0 + 1e-6:
        raise ValueError(
            f"background {background.shape[:2]} is not a uniform resize of {image.shape[:2]}"
        )
    return (sx + sy) / 2.0


def restore_faces_in_photo(
    image: np.ndarray,
    background: np.ndarray,
    restore_face: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    detector: FaceDetector,
    restore_faces: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
    only_center: bool = False,
    min_size: float = 0.0,
    max_faces: int | None = None,
    face_size: int = 512,
    crop_scale: float = 1.0,
    border: str = "constant",
    feather: int | None = None,
) -> WholePhotoResult:
    """Find the faces in ``image``, restore each, and paste them onto ``background``.

    Args:
        image: the input photo, in which faces are detected and cut out.
        background: the restored photo (any uniform resize of ``image``).
        restore_face: maps a ``face_size`` x ``face_size`` aligned crop to its
            restored version of the same shape.
        restore_faces: instead, maps the list of every crop to the list of restored
            crops in one call (so that the faces of a photo are restored in batches).
        detector: e.g. :class:`~diffbir.faces.detect.YuNetDetector`.
        only_center, min_size, max_faces: see :func:`~diffbir.faces.detect.select_faces`.
        face_size, crop_scale, border: see :func:`~diffbir.faces.align.align_face`.
        feather: see :func:`~diffbir.faces.paste.paste_face`.

    Returns the composed image and, per face, the crop and the restored crop
    (for saving). With no face, the image is ``background`` unchanged.
    """
    upscale = _upscale_between(image, background)
    faces = select_faces(
        detector.detect(image),
        only_center=only_center,
        min_size=min_size,
        max_faces=max_faces,
        image_size=image.shape[:2],
    )
    if (restore_face is None) == (restore_faces is None):
        raise ValueError("pass one of restore_face and restore_faces")
    result = np.asarray(background, dtype=np.float32)
    aligned = [
        align_face(image, face.landmarks, face_size, scale=crop_scale, border=border)
        for face in faces
    ]
    crops = [crop for crop, _ in aligned]
    if restore_faces is not None:
        restored_all = list(restore_faces(crops)) if crops else []
    else:
        restored_all = [restore_face(crop) for crop in crops]
    if len(restored_all) != len(crops):
        raise ValueError(f"{len(restored_all)} restored faces for {len(crops)} crops")
    done = []
    for face, (crop, affine), restored in zip(faces, aligned, restored_all):
        restored = np.asarray(restored, dtype=np.float32)
        if restored.shape != crop.shape:
            raise ValueError(f"a restored face has shape {restored.shape}, expected {crop.shape}")
        result = paste_face(result, restored, affine, feather=feather, upscale=upscale)
        done.append(RestoredFace(face=face, crop=crop, affine=affine, restored=restored))
    return WholePhotoResult(image=result, faces=done)
