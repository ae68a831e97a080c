"""Face detection with five landmarks, and the choice of which faces to restore.

Images are numpy HWC float32 RGB in [0, 1]. Boxes and landmarks are in pixels
of that image, pixel centres at integer positions. Landmarks come in the
order of :data:`diffbir.faces.align.FFHQ_TEMPLATE_512`: the eye on the left of
the image, the eye on the right, the nose tip, the mouth corner on the left,
the mouth corner on the right.

The detector is OpenCV's YuNet (``cv2.FaceDetectorYN``) with the ONNX model
``face_detection_yunet_2023mar.onnx`` from the OpenCV model zoo; it needs no
framework beyond OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from diffbir.errors import CheckpointError

__all__ = ["Face", "FaceDetector", "YuNetDetector", "select_faces"]


@dataclass(frozen=True)
class Face:
    """One detected face: box (x0, y0, x1, y1), (5, 2) landmarks, confidence."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def size(self) -> float:
        """Side of the square with the box's area, in pixels."""
        x0, y0, x1, y1 = self.box
        return math.sqrt(max(0.0, x1 - x0) * max(0.0, y1 - y0))

    @property
    def center(self) -> tuple[float, float]:
        """Centre (x, y) of the box."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


class FaceDetector(Protocol):
    """Anything that finds faces with five landmarks in an HWC RGB [0, 1] image."""

    def detect(self, image: np.ndarray) -> list[Face]:
        """Return the faces found in ``image``, most confident first."""
        ...


class YuNetBackend(Protocol):
    """The part of ``cv2.FaceDetectorYN`` that :class:`YuNetDetector` uses."""

    def setInputSize(self, input_size: tuple[int, int]) -> None: ...  # noqa: N802

    def detect(self, image: np.ndarray) -> tuple[Any, np.ndarray | None]: ...


# YuNet rows: x, y, w, h, then five (x, y) landmarks, then the score. Its
# landmark order (OpenCV docs: right eye, left eye, nose tip, right mouth
# corner, left mouth corner, "right" meaning the subject's right) is, in image
# terms, left-of-image eye first: the template's order, so no reordering.
_YUNET_ROW = 15
_YUNET_TO_TEMPLATE = (0, 1, 2, 3, 4)


def parse_yunet_rows(rows: np.ndarray | None, scale_x: float, scale_y: float) -> list[Face]:
    """Turn YuNet's (N, 15) output into faces in the original image's pixels.

    ``scale_x``/``scale_y`` are the original size over the size YuNet saw;
    the pixel-centre convention of ``cv2.resize`` is undone exactly.
    """
    if rows is None:
        return []
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, _YUNET_ROW)
    faces = []
    for row in rows:
        x, y, w, h = row[:4]
        corners = np.array([[x, y], [x + w, y + h]])
        points = row[4:14].reshape(5, 2)[list(_YUNET_TO_TEMPLATE)]
        # Undo the resize: a point p of the resized image came from (p + 0.5) * s - 0.5.
        back = np.array([scale_x, scale_y])
        corners = (corners + 0.5) * back - 0.5
        points = (points + 0.5) * back - 0.5
        box = (
            float(corners[0, 0]),
            float(corners[0, 1]),
            float(corners[1, 0]),
            float(corners[1, 1]),
        )
        faces.append(Face(box=box, landmarks=points.astype(np.float32), score=float(row[14])))
    faces.sort(key=lambda f: f.score, reverse=True)
    return faces


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def merge_detections(faces: Sequence[Face], iou_threshold: float) -> list[Face]:
    """Greedy non-maximum suppression over faces from several passes."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(_iou(face.box, k.box) <= iou_threshold for k in kept):
            kept.append(face)
    return kept


def _to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HWC RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, ::-1])


class YuNetDetector:
    """Face detector backed by OpenCV's YuNet.

    YuNet finds faces of roughly 10 to 300 pixels at the resolution it runs
    at, so the image runs at ``max_side`` (downscaled if larger) and, when
    that is bigger than ``coarse_side``, once more at ``coarse_side`` to catch
    faces that fill much of the frame; the two passes are merged by
    non-maximum suppression.
    """

    def __init__(
        self,
        model_path: str | PathLike,
        *,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int = 1280,
        coarse_side: int | None = 320,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise CheckpointError(
                f"face detector model not found: {path} "
                "(expected face_detection_yunet_2023mar.onnx from the OpenCV model zoo)"
            )
        try:
            backend = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), score_threshold, nms_threshold, top_k
            )
        except cv2.error as exc:
            raise CheckpointError(
                f"cannot load face detector model {path}: not a readable YuNet ONNX file "
                f"({_first_line(exc)})"
            ) from None
        if backend is None:
            raise CheckpointError(f"cannot load face detector model {path}")
        self._init(backend, nms_threshold, max_side, coarse_side)

    @classmethod
    def from_backend(
        cls,
        backend: YuNetBackend,
        *,
        nms_threshold: float = 0.3,
        max_side: int = 1280,
        coarse_side: int | None = 320,
    ) -> YuNetDetector:
        """Wrap an already created ``cv2.FaceDetectorYN`` (or a stand-in with its API)."""
        detector = cls.__new__(cls)
        detector._init(backend, nms_threshold, max_side, coarse_side)
        return detector

    def _init(
        self, backend: YuNetBackend, nms_threshold: float, max_side: int, coarse_side: int | None
    ) -> None:
        if max_side <= 0 or (coarse_side is not None and coarse_side <= 0):
            raise ValueError("max_side and coarse_side must be positive")
        self._backend = backend
        self._nms_threshold = nms_threshold
        self._max_side = max_side
        self._coarse_side = coarse_side

    def _sides(self, long_side: int) -> list[int]:
        sides = [min(long_side, self._max_side)]
        if self._coarse_side is not None and self._coarse_side < sides[0]:
            sides.append(self._coarse_side)
        return sides

    def _detect_at(self, bgr: np.ndarray, side: int) -> list[Face]:
        height, width = bgr.shape[:2]
        factor = side / max(height, width)
        run_w = max(1, round(width * factor))
        run_h = max(1, round(height * factor))
        if (run_w, run_h) != (width, height):
            bgr = cv2.resize(bgr, (run_w, run_h), interpolation=cv2.INTER_AREA)
        # YuNet's input size must match each image exactly.
        self._backend.setInputSize((run_w, run_h))
        try:
            _, rows = self._backend.detect(bgr)
        except cv2.error as exc:
            # A valid ONNX file that is not YuNet loads fine and fails here.
            raise CheckpointError(
                f"face detector model does not behave like YuNet ({_first_line(exc)})"
            ) from None
        return parse_yunet_rows(rows, width / run_w, height / run_h)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Return the faces in an HWC RGB [0, 1] image (or uint8), most confident first."""
        bgr = _to_bgr_uint8(image)
        long_side = max(bgr.shape[:2])
        faces: list[Face] = []
        for side in self._sides(long_side):
            faces.extend(self._detect_at(bgr, side))
        return merge_detections(faces, self._nms_threshold)


def _first_line(error: Exception) -> str:
    """The informative part of an OpenCV error, without its source-file prefix."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text.split("error: ", 1)[-1]


def select_faces(
    faces: Sequence[Face],
    *,
    only_center: bool = False,
    min_size: float = 0.0,
    max_faces: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[Face]:
    """Choose which detected faces to restore.

    Faces smaller than ``min_size`` (side of the square with the box's area,
    in pixels) are dropped. With ``only_center`` the one face whose box centre
    is nearest the image centre is kept (``image_size`` = (height, width) is
    then required). Otherwise the faces are returned largest first, at most
    ``max_faces`` of them.
    """
    if max_faces is not None and max_faces < 0:
        raise ValueError(f"max_faces must be >= 0, got {max_faces}")
    kept = [f for f in faces if f.size >= min_size]
    if only_center:
        if image_size is None:
            raise ValueError("only_center needs image_size=(height, width)")
        height, width = image_size
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        kept.sort(key=lambda f: (f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2)
        kept = kept[:1]
    else:
        kept.sort(key=lambda f: f.size, reverse=True)
    if max_faces is not None:
        kept = kept[:max_faces]
    return kept
