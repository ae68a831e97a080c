"""Colour management: ICC inputs into sRGB for the models, results back into the profile."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from diffbir.errors import DiffBIRWarning
from diffbir.imaging import profiles
from diffbir.imaging.icc_build import SPACES, make_profile
from diffbir.imaging.io import read_image, write_image

# A known colour (sRGB 8-bit) well inside every gamut: a foliage green and a skin tone.
KNOWN = np.array([[[96, 158, 72], [224, 172, 140]]], dtype=np.uint8)


def _icc_of(path) -> bytes | None:
    with Image.open(path) as img:
        return img.info.get("icc_profile")


@pytest.fixture(params=sorted(SPACES))
def space(request):
    return request.param, make_profile(request.param)


def test_built_profiles_open_in_littlecms(space):
    name, icc = space
    assert profiles.describe(icc) == name
    assert profiles.is_rgb_profile(icc)
    assert profiles._model(icc) is not None  # matrix/TRC, so 16 bits convert in float


def test_float_path_agrees_with_littlecms_within_one_level(space):
    _, icc = space
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cms = np.asarray(profiles.to_srgb_image(Image.fromarray(pixels), icc)).astype(int)
    flt = np.round(profiles.to_srgb_array(pixels / 255.0, icc) * 255).astype(int)
    assert np.abs(cms - flt).max() <= 1
    back_cms = profiles.from_srgb_image(cms.astype(np.uint8), icc).astype(int)
    back_flt = np.round(profiles.from_srgb_array(cms / 255.0, icc) * 255)
    assert np.abs(back_cms - back_flt).max() <= 2  # littlecms's own 8-bit rounding


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_known_colour_survives_the_round_trip(space, suffix, tmp_path):
    name, icc = space
    stored = profiles.from_srgb_image(np.repeat(np.repeat(KNOWN, 8, 0), 8, 1), icc)
    src = tmp_path / f"in{suffix}"
    options = {"quality": 100, "subsampling": 0} if suffix == ".jpg" else {}
    Image.fromarray(stored).save(src, icc_profile=icc, **options)
    image = read_image(src)
    assert image.icc_profile == icc
    seen = np.asarray(Image.open(src)).astype(int)
    srgb = np.round(image.rgb.permute(1, 2, 0).numpy() * 255).astype(int)
    expected = np.asarray(profiles.to_srgb_image(Image.fromarray(seen.astype(np.uint8)), icc))
    assert np.abs(srgb - expected).max() <= 1  # the models see sRGB
    out = write_image(tmp_path / f"out{suffix}", image.rgb, icc_profile=icc, quality=100)
    assert _icc_of(out) == icc
    written = np.asarray(Image.open(out)).astype(int)
    assert np.abs(written - seen).max() <= (1 if suffix != ".jpg" else 3)
    if suffix != ".jpg":  # lossless: the known sRGB colour itself, within a level
        assert np.abs(srgb[4, 4] - KNOWN[0, 0]).max() <= 1
        assert np.abs(srgb[4, 12] - KNOWN[0, 1]).max() <= 1


def test_sixteen_bit_tiff_converts_in_sixteen_bits(tmp_path):
    icc = make_profile("ProPhoto RGB")
    ramp = np.linspace(0, 1, 4096, dtype=np.float32)
    rgb = np.stack([ramp, ramp[::-1], np.full_like(ramp, 0.5)], -1)[None].repeat(4, 0)
    stored = np.round(profiles.from_srgb_array(rgb, icc) * 65535).astype(np.uint16)
    src = tmp_path / "scan.tif"
    out = write_image(src, torch.from_numpy(rgb).permute(2, 0, 1), bit_depth=16, icc_profile=icc)
    with Image.open(out) as img:
        assert img.info["icc_profile"] == icc
    image = read_image(src)
    assert image.bit_depth == 16
    values = image.rgb.permute(1, 2, 0).numpy()
    assert np.abs(values - rgb).max() < 2 / 65535 * 20  # far below one 8-bit level
    assert len(np.unique(np.round(values[..., 0] * 65535))) > 4000  # no 8-bit step
    again = write_image(tmp_path / "again.tif", image.rgb, bit_depth=16, icc_profile=icc)
    import cv2

    written = cv2.imread(str(again), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(int)
    assert np.abs(written - stored).max() <= 16  # within 1/4000 of the range


def test_untagged_input_is_srgb_and_the_output_is_tagged_srgb(tmp_path):
    src = tmp_path / "plain.png"
    Image.fromarray(np.repeat(np.repeat(KNOWN, 4, 0), 4, 1)).save(src)
    image = read_image(src)
    assert image.icc_profile is None
    assert profiles.output_profile(image.icc_profile, "input") is None
    out = write_image(tmp_path / "out.png", image.rgb)
    assert _icc_of(out) == profiles.srgb_profile()
    assert (np.asarray(Image.open(out)) == np.asarray(Image.open(src))).all()


def test_output_profile_srgb_converts_a_wide_gamut_input(tmp_path):
    icc = make_profile("Adobe RGB (1998)")
    assert profiles.output_profile(icc, "input") == icc
    assert profiles.output_profile(icc, "srgb") is None
    with pytest.raises(ValueError):
        profiles.output_profile(icc, "p3")
    stored = profiles.from_srgb_image(np.repeat(np.repeat(KNOWN, 4, 0), 4, 1), icc)
    src = tmp_path / "adobe.png"
    Image.fromarray(stored).save(src, icc_profile=icc)
    image = read_image(src)
    out = write_image(tmp_path / "srgb.png", image.rgb, icc_profile=None)
    assert _icc_of(out) == profiles.srgb_profile()
    assert np.abs(np.asarray(Image.open(out)).astype(int)[0, 0] - KNOWN[0, 0]).max() <= 1


def test_gray_and_cmyk_inputs_are_written_in_srgb(tmp_path):
    cmyk = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))  # an RGB profile
    assert profiles.output_profile(b"\0" * 16 + b"GRAY" + b"\0" * 200, "input") is None
    img = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    src = tmp_path / "cmyk.jpg"
    img.save(src)
    image = read_image(src)  # no CMYK profile: Pillow's conversion, as before
    assert image.rgb.shape == (3, 8, 8)
    assert profiles.output_profile(cmyk.tobytes(), "input") == cmyk.tobytes()


def test_a_broken_profile_is_taken_as_srgb_with_a_note(tmp_path):
    src = tmp_path / "broken.png"
    Image.fromarray(np.repeat(np.repeat(KNOWN, 4, 0), 4, 1)).save(src, icc_profile=b"junk" * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(src)
    assert any(
        issubclass(w.category, DiffBIRWarning) and "taken as sRGB" in str(w.message) for w in caught
    )
    assert np.abs(np.round(image.rgb[:, 0, 0].numpy() * 255) - KNOWN[0, 0]).max() == 0
    assert profiles.output_profile(image.icc_profile, "input") is None


def test_srgb_profile_is_littlecms_builtin():
    icc = profiles.srgb_profile()
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    assert "sRGB" in profile.profile.profile_description
