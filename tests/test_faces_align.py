"""Geometry of face alignment and paste-back, on synthetic images with known landmarks."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from diffbir.faces import (
    FFHQ_TEMPLATE_512,
    align_face,
    estimate_similarity,
    face_alpha,
    face_template,
    image_to_tensor,
    invert_affine,
    paste_face,
    tensor_to_image,
)
from diffbir.faces.warp import map_points


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array(
        [
            [scale * math.cos(a), -scale * math.sin(a), tx],
            [scale * math.sin(a), scale * math.cos(a), ty],
        ]
    )


def face_landmarks(angle_deg: float, scale: float, centre: tuple[float, float]) -> np.ndarray:
    """The template placed in a photo: rotated and scaled about its centre, then moved."""
    m = similarity(angle_deg, scale, 0.0, 0.0)
    return map_points(m, FFHQ_TEMPLATE_512 - 255.5) + np.array(centre)


def smooth_photo(height: int = 300, width: int = 400, seed: int = 0) -> np.ndarray:
    """A photo-like image with detail at every position but no content above ~1/8 cycle/px."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3)).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), 4)
    return (img - img.min()) / (img.max() - img.min())


def test_template_is_the_published_ffhq_one():
    # The eyes are level and ~126 px apart; the nose sits between them.
    t = FFHQ_TEMPLATE_512
    assert t.shape == (5, 2)
    assert abs(t[0, 1] - t[1, 1]) < 0.5
    assert 125 < t[1, 0] - t[0, 0] < 127
    assert t[0, 0] < t[2, 0] < t[1, 0]
    assert t[3, 0] < t[4, 0] and t[3, 1] > t[2, 1]


def test_estimate_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    m = similarity(37.0, 2.5, -14.0, 60.0)
    est = estimate_similarity(src, map_points(m, src))
    np.testing.assert_allclose(est, m, atol=1e-9)


def test_estimate_similarity_never_mirrors():
    src = FFHQ_TEMPLATE_512
    mirrored = src * np.array([-1.0, 1.0])
    est = estimate_similarity(src, mirrored)
    assert np.linalg.det(est[:, :2]) > 0
    # The best proper fit: equal-scale columns, orthogonal.
    a = est[:, :2]
    assert abs(a[0] @ a[1]) < 1e-9 or abs(a[:, 0] @ a[:, 1]) < 1e-9


def test_estimate_similarity_rejects_degenerate_points():
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), FFHQ_TEMPLATE_512)


def test_invert_affine_round_trip():
    m = similarity(-20.0, 0.7, 5.0, 9.0)
    pts = np.array([[3.0, 4.0], [100.0, -7.0]])
    np.testing.assert_allclose(map_points(invert_affine(m), map_points(m, pts)), pts, atol=1e-9)


def _dot_image(points: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width), np.float64)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat(img[:, :, None], 3, axis=2).astype(np.float32)


def _centroid_near(img: np.ndarray, point: np.ndarray, radius: int) -> np.ndarray:
    x, y = np.round(point).astype(int)
    patch = img[y - radius : y + radius + 1, x - radius : x + radius + 1, 0].astype(np.float64)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    w = patch / patch.sum()
    return np.array([x + (xx * w).sum(), y + (yy * w).sum()])


@pytest.mark.parametrize(("angle", "scale"), [(0.0, 0.5), (25.0, 0.4), (-40.0, 0.8)])
def test_synthetic_landmarks_land_on_the_template(angle, scale):
    landmarks = face_landmarks(angle, scale, (200.0, 170.0))
    photo = _dot_image(landmarks, 340, 400, sigma=2.0)
    crop, affine = align_face(photo, landmarks)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.float32
    # The returned matrix sends the photo's landmarks onto the template ...
    assert np.abs(map_points(affine, landmarks) - FFHQ_TEMPLATE_512).max() < 1.0
    # ... and the crop really shows each dot there (found from the pixels).
    for point in FFHQ_TEMPLATE_512:
        found = _centroid_near(crop, point, radius=int(4 * 2.0 / scale))
        assert np.linalg.norm(found - point) < 1.0


def test_align_scale_and_size():
    landmarks = face_landmarks(10.0, 0.5, (200.0, 150.0))
    photo = smooth_photo()
    crop, affine = align_face(photo, landmarks, size=256, scale=1.5)
    assert crop.shape == (256, 256, 3)
    mapped = map_points(affine, landmarks)
    np.testing.assert_allclose(mapped, face_template(256, scale=1.5), atol=1e-6)
    eye_distance = np.linalg.norm(mapped[1] - mapped[0])
    standard = np.linalg.norm(FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0]) * 256 / 512
    assert eye_distance == pytest.approx(standard / 1.5, rel=1e-6)


def test_align_borders_fill_outside_the_photo():
    photo = np.full((200, 200, 3), 0.5, np.float32)
    landmarks = face_landmarks(0.0, 0.5, (10.0, 100.0))  # left half of the face is outside
    crop_c, _ = align_face(photo, landmarks, border="constant")
    crop_r, _ = align_face(photo, landmarks, border="reflect")
    assert crop_c[256, 5].max() == 0.0 and crop_c[256, 500].min() == pytest.approx(0.5)
    np.testing.assert_allclose(crop_r, 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="border"):
        align_face(photo, landmarks, border="wrap")


def test_align_antialiases_large_faces():
    # A 1-px checkerboard seen through a 4x shrink must average to grey, not alias.
    yy, xx = np.mgrid[0:1200, 0:1200]
    board = ((xx + yy) % 2).astype(np.float32)
    photo = np.repeat(board[:, :, None], 3, axis=2)
    crop, _ = align_face(photo, face_landmarks(0.0, 2.0, (600.0, 600.0)), size=256)
    assert abs(float(crop.mean()) - 0.5) < 0.02
    assert float(crop.std()) < 0.02


def _round_trip(photo, landmarks, *, border="constant", upscale=1.0, background=None):
    crop, affine = align_face(photo, landmarks, border=border)
    background = photo if background is None else background
    out = paste_face(background, crop, affine, upscale=upscale)
    alpha = face_alpha(background.shape[:2], crop.shape[:2], affine, upscale=upscale)
    return out, alpha, np.abs(out - background).max(axis=2)


def test_paste_unchanged_crop_leaves_photo_unchanged():
    photo = smooth_photo()
    out, alpha, err = _round_trip(photo, face_landmarks(20.0, 0.3, (180.0, 140.0)))
    assert out.shape == photo.shape and out.dtype == np.float32
    face = alpha > 0
    band = face & (alpha < 1)
    assert face.sum() > 10_000
    # The band is thin: most of the pasted region is copied at full weight.
    assert band.sum() < 0.6 * face.sum()
    assert err[~face].max() == 0.0  # untouched outside the face region
    assert err[alpha == 1].max() < 0.02  # two bilinear resamplings of a smooth image
    assert err.max() < 0.02  # and no visible seam in the band either


@pytest.mark.parametrize("border", ["constant", "reflect"])
def test_paste_face_partly_outside_the_photo(border):
    photo = smooth_photo()
    landmarks = face_landmarks(-35.0, 0.6, (30.0, 280.0))
    out, alpha, err = _round_trip(photo, landmarks, border=border)
    # The crop reaches past the left and bottom edges; the face keeps full
    # weight up to the photo's edge (no fade, no dark rim there).
    assert alpha[-1, :30].min() == 1.0 and alpha[150:, 0].min() == 1.0
    assert err[-1].max() < 0.02 and err[:, 0].max() < 0.02
    assert err.max() < 0.02


def test_paste_face_entirely_outside_is_a_no_op():
    photo = smooth_photo()
    crop, affine = align_face(photo, face_landmarks(0.0, 0.3, (150.0, 150.0)))
    far = affine.copy()
    far[:, 2] += np.array([5000.0, 0.0])  # the crop now corresponds to x < -4000
    out = paste_face(photo, np.ones_like(crop), far)
    np.testing.assert_array_equal(out, photo)


def test_paste_several_faces():
    photo = smooth_photo()
    faces = [face_landmarks(0.0, 0.25, (100.0, 150.0)), face_landmarks(15.0, 0.25, (300.0, 150.0))]
    out = photo
    alphas = []
    for i, landmarks in enumerate(faces):
        crop, affine = align_face(photo, landmarks)
        restored = np.full_like(crop, 0.2 * (i + 1))  # a "restored" face of flat colour
        out = paste_face(out, restored, affine)
        alphas.append(face_alpha(photo.shape[:2], crop.shape[:2], affine))
    for i, alpha in enumerate(alphas):
        np.testing.assert_allclose(out[alpha == 1], 0.2 * (i + 1), atol=1e-6)
    untouched = (alphas[0] == 0) & (alphas[1] == 0)
    np.testing.assert_array_equal(out[untouched], photo[untouched])
    assert untouched.any()


def test_paste_onto_an_upscaled_background():
    photo = smooth_photo()
    upscale = 2.5
    big = cv2.resize(photo, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_LINEAR)
    landmarks = face_landmarks(20.0, 0.3, (180.0, 140.0))
    out, alpha, err = _round_trip(photo, landmarks, upscale=upscale, background=big)
    assert out.shape == big.shape
    assert err.max() < 0.01
    # The pasted region is centred where the crop's centre lands in the big image.
    _, affine = align_face(photo, landmarks)
    crop_centre = map_points(invert_affine(affine), np.array([[255.5, 255.5]]))[0]
    ys, xs = np.nonzero(alpha == 1)
    expected = (crop_centre + 0.5) * upscale - 0.5
    np.testing.assert_allclose([xs.mean(), ys.mean()], expected, atol=1.5)


def test_feather_width_controls_the_band():
    photo = smooth_photo()
    _, affine = align_face(photo, face_landmarks(0.0, 0.3, (200.0, 150.0)))
    hard = face_alpha(photo.shape[:2], (512, 512), affine, feather=0)
    assert set(np.unique(hard)) == {0.0, 1.0}
    soft = face_alpha(photo.shape[:2], (512, 512), affine, feather=6)
    row = soft[150]
    inside = np.nonzero(hard[150])[0]
    left = inside[0]
    # Zero outside the crop, near zero on its outline, full weight 2 * feather pixels in.
    assert row[left - 1] == 0.0 and row[left] < 0.05 and row[left + 12] == 1.0
    assert row[left + 11] < 1.0
    assert 0.0 < row[left + 6] < 1.0
    assert (soft <= hard).all()


def test_paste_mask_weights_the_blend():
    photo = smooth_photo()
    crop, affine = align_face(photo, face_landmarks(0.0, 0.3, (200.0, 150.0)))
    out = paste_face(photo, np.ones_like(crop), affine, mask=np.zeros((512, 512), np.float32))
    np.testing.assert_array_equal(out, photo)
    with pytest.raises(ValueError, match="mask"):
        paste_face(photo, crop, affine, mask=np.zeros((64, 64), np.float32))


def test_tensor_converters_round_trip():
    photo = smooth_photo(20, 30)
    tensor = image_to_tensor(photo)
    assert tensor.shape == (1, 3, 20, 30) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0, 1], torch.from_numpy(photo[:, :, 1]))
    np.testing.assert_array_equal(tensor_to_image(tensor), photo)
    np.testing.assert_array_equal(tensor_to_image(tensor[0]), photo)
    with pytest.raises(ValueError, match="one image"):
        tensor_to_image(torch.zeros(2, 3, 4, 4))
