"""Face detector loading, YuNet output parsing (through a stand-in backend), face selection."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from diffbir.errors import CheckpointError
from diffbir.faces import (
    FFHQ_TEMPLATE_512,
    Face,
    YuNetDetector,
    align_face,
    face_alpha,
    restore_faces_in_photo,
    select_faces,
)
from diffbir.faces.warp import map_points


def test_missing_model_file_is_a_checkpoint_error(tmp_path):
    missing = tmp_path / "face_detection_yunet_2023mar.onnx"
    with pytest.raises(CheckpointError, match="not found") as info:
        YuNetDetector(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not an onnx model" * 100, bytes(range(256)) * 20])
def test_garbage_model_file_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "yunet.onnx"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot load face detector model") as info:
        YuNetDetector(path)
    assert "\n" not in str(info.value)


class StubYuNet:
    """Stands in for cv2.FaceDetectorYN: returns fixed rows per input size, records calls."""

    def __init__(self, rows_by_size):
        self.rows_by_size = rows_by_size
        self.input_size = None
        self.calls = []

    def setInputSize(self, input_size):  # noqa: N802 (OpenCV's name)
        self.input_size = tuple(input_size)

    def detect(self, image):
        assert image.dtype == np.uint8 and image.ndim == 3
        assert (image.shape[1], image.shape[0]) == self.input_size
        self.calls.append((self.input_size, image))
        rows = self.rows_by_size.get(self.input_size)
        return (1, None if rows is None else np.asarray(rows, np.float32))


def yunet_row(box, landmarks, score):
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0, *np.asarray(landmarks).ravel(), score]


def test_rows_are_scaled_back_to_the_input_image():
    # A 2560x1280 image runs at 1280x640 (half size) and at 320x160.
    points = np.array([[100.0, 80.0], [140.0, 80.0], [120.0, 100.0], [105.0, 120.0], [135, 120]])
    stub = StubYuNet({(1280, 640): [yunet_row((90, 60, 150, 135), points, 0.93)]})
    detector = YuNetDetector.from_backend(stub)
    image = np.zeros((1280, 2560, 3), np.float32)
    image[..., 0] = 1.0  # pure red in RGB
    faces = detector.detect(image)

    assert [size for size, _ in stub.calls] == [(1280, 640), (320, 160)]
    seen = stub.calls[0][1]
    assert seen[..., 2].min() == 255 and seen[..., :2].max() == 0  # OpenCV gets BGR uint8
    assert len(faces) == 1
    face = faces[0]
    np.testing.assert_allclose(face.landmarks, (points + 0.5) * 2.0 - 0.5, atol=1e-4)
    np.testing.assert_allclose(face.box, [180.5, 120.5, 300.5, 270.5], atol=1e-4)
    assert face.score == pytest.approx(0.93)
    # Template order is kept: the first eye is the one on the left of the image.
    assert face.landmarks[0, 0] < face.landmarks[1, 0]


def test_small_images_run_once_at_their_own_size():
    stub = StubYuNet({})
    detector = YuNetDetector.from_backend(stub, coarse_side=None)
    assert detector.detect(np.zeros((50, 70, 3), np.float32)) == []
    assert [size for size, _ in stub.calls] == [(70, 50)]


def test_passes_are_merged_by_non_maximum_suppression():
    big = yunet_row((40, 40, 240, 240), np.full((5, 2), 140.0), 0.80)
    other = yunet_row((400, 40, 440, 80), np.full((5, 2), 420.0), 0.95)
    # The coarse pass (a quarter of the size) sees the same big face again, more confidently.
    same_big = yunet_row((10, 10, 60, 60), np.full((5, 2), 35.0), 0.90)
    stub = StubYuNet({(640, 320): [big, other], (160, 80): [same_big]})
    faces = YuNetDetector.from_backend(stub, max_side=640, coarse_side=160).detect(
        np.zeros((320, 640, 3), np.float32)
    )
    assert [f.score for f in faces] == pytest.approx([0.95, 0.90])
    assert faces[1].size == pytest.approx(200.0, abs=3.0)


def test_detected_face_aligns_to_the_template():
    # End to end through the stub: a face whose landmarks are the template at
    # half size lands back on the template.
    points = FFHQ_TEMPLATE_512 * 0.5 + np.array([20.0, 10.0])
    stub = StubYuNet({(320, 300): [yunet_row((20, 10, 276, 266), points, 0.9)]})
    faces = YuNetDetector.from_backend(stub, coarse_side=None).detect(
        np.zeros((300, 320, 3), np.float32)
    )
    crop, affine = align_face(np.zeros((300, 320, 3), np.float32), faces[0].landmarks)
    assert crop.shape == (512, 512, 3)
    assert np.abs(map_points(affine, faces[0].landmarks) - FFHQ_TEMPLATE_512).max() < 1e-3


def make_face(x0, y0, side, score=0.9):
    return Face(
        box=(x0, y0, x0 + side, y0 + side),
        landmarks=np.zeros((5, 2), np.float32),
        score=score,
    )


def test_select_faces_largest_first_with_limits():
    faces = [make_face(0, 0, 20), make_face(50, 50, 80), make_face(200, 0, 40)]
    assert [f.size for f in select_faces(faces)] == [80, 40, 20]
    assert [f.size for f in select_faces(faces, min_size=30)] == [80, 40]
    assert [f.size for f in select_faces(faces, max_faces=1)] == [80]
    assert select_faces(faces, max_faces=0) == []
    assert select_faces(faces, min_size=100) == []
    with pytest.raises(ValueError):
        select_faces(faces, max_faces=-1)


def test_select_only_center_face():
    # Image 400 wide, 200 high: centre (199.5, 99.5).
    faces = [make_face(0, 0, 100), make_face(170, 70, 60), make_face(300, 100, 90)]
    chosen = select_faces(faces, only_center=True, image_size=(200, 400))
    assert len(chosen) == 1 and chosen[0].box[0] == 170
    # The size limit applies before the choice.
    chosen = select_faces(faces, only_center=True, image_size=(200, 400), min_size=70)
    assert chosen[0].box[0] == 300
    with pytest.raises(ValueError, match="image_size"):
        select_faces(faces, only_center=True)


def test_face_size_and_center():
    face = Face(box=(10.0, 20.0, 50.0, 120.0), landmarks=np.zeros((5, 2)), score=0.5)
    assert face.size == pytest.approx(np.sqrt(40.0 * 100.0))
    assert face.center == (30.0, 70.0)


TINY_YUNET = Path(__file__).parent / "fixtures" / "faces" / "tiny_yunet.onnx"


def test_real_opencv_detector_with_a_tiny_yunet_model():
    # tiny_yunet.onnx (see make_tiny_yunet.py) fires one stride-8 anchor per
    # white 8x8 cell. Here the image is twice the 1280 detection side, so the
    # 16x16 block at x 48..64, y 32..48 is seen as the cell at column 3, row 2.
    image = np.zeros((1280, 2560, 3), np.float32)
    image[32:48, 48:64] = 1.0
    detector = YuNetDetector(TINY_YUNET, score_threshold=0.7)
    faces = detector.detect(image)
    assert len(faces) == 1
    # In detection pixels: box centre (3.5, 2.5) * 8, size 16 x 24;
    # landmarks (column + offset) * 8.
    offsets = np.array([[0.2, 0.3], [0.8, 0.3], [0.5, 0.5], [0.25, 0.7], [0.75, 0.7]])
    points = (np.array([3.0, 2.0]) + offsets) * 8.0
    np.testing.assert_allclose(faces[0].landmarks, (points + 0.5) * 2.0 - 0.5, atol=1e-3)
    np.testing.assert_allclose(
        faces[0].box, (np.array([20.0, 8.0, 36.0, 32.0]) + 0.5) * 2.0 - 0.5, atol=1e-3
    )
    assert faces[0].score == pytest.approx(1.0)
    assert detector.detect(np.zeros((100, 70, 3), np.float32)) == []


class FixedDetector:
    """A FaceDetector that returns given faces."""

    def __init__(self, faces):
        self.faces = faces

    def detect(self, image):
        return list(self.faces)


def template_face(scale, centre):
    points = (FFHQ_TEMPLATE_512 - 255.5) * scale + np.array(centre)
    half = 256 * scale
    box = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    return Face(box=box, landmarks=points.astype(np.float32), score=0.9)


def test_restore_faces_in_photo_pastes_each_restored_face():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((120, 200, 3)).astype(np.float32), (0, 0), 3)
    background = cv2.resize(image, (400, 240), interpolation=cv2.INTER_LINEAR)
    faces = [template_face(0.15, (60.0, 60.0)), template_face(0.02, (160.0, 60.0))]
    seen = []

    def restore(crop):
        seen.append(crop.shape)
        return 1.0 - crop

    result = restore_faces_in_photo(
        image, background, restore, detector=FixedDetector(faces), min_size=20
    )
    assert seen == [(512, 512, 3)]  # the 10-px face was left alone
    assert len(result.faces) == 1 and result.faces[0].face is faces[0]
    alpha = face_alpha((240, 400), (512, 512), result.faces[0].affine, upscale=2.0)
    np.testing.assert_allclose(result.image[alpha == 1], 1.0 - background[alpha == 1], atol=0.02)
    np.testing.assert_array_equal(result.image[alpha == 0], background[alpha == 0])
    assert (alpha == 1).sum() > 1000


def test_restore_faces_in_photo_without_faces_returns_the_background():
    image = np.zeros((50, 60, 3), np.float32)
    background = np.full((100, 120, 3), 0.3, np.float32)
    result = restore_faces_in_photo(image, background, lambda c: c, detector=FixedDetector([]))
    assert result.faces == []
    np.testing.assert_array_equal(result.image, background)
    with pytest.raises(ValueError, match="uniform resize"):
        restore_faces_in_photo(image, background[:, :100], lambda c: c, detector=FixedDetector([]))
    with pytest.raises(ValueError, match="a restored face has shape"):
        restore_faces_in_photo(
            image,
            background,
            lambda c: c[:10],
            detector=FixedDetector([template_face(0.05, (30.0, 25.0))]),
        )
    with pytest.raises(ValueError, match="0 restored faces for 1 crops"):
        restore_faces_in_photo(
            image,
            background,
            detector=FixedDetector([template_face(0.05, (30.0, 25.0))]),
            restore_faces=lambda crops: [],
        )
    with pytest.raises(ValueError, match="one of restore_face and restore_faces"):
        restore_faces_in_photo(image, background, detector=FixedDetector([]))


def test_restore_faces_in_photo_batches_every_crop_in_one_call():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((120, 200, 3)).astype(np.float32), (0, 0), 3)
    background = cv2.resize(image, (400, 240), interpolation=cv2.INTER_LINEAR)
    faces = [template_face(0.15, (60.0, 60.0)), template_face(0.15, (140.0, 60.0))]
    calls = []

    def restore_all(crops):
        calls.append(len(crops))
        return [1.0 - crop for crop in crops]

    batched = restore_faces_in_photo(
        image, background, detector=FixedDetector(faces), restore_faces=restore_all
    )
    one_by_one = restore_faces_in_photo(
        image, background, lambda c: 1.0 - c, detector=FixedDetector(faces)
    )
    assert calls == [2]
    np.testing.assert_array_equal(batched.image, one_by_one.image)
