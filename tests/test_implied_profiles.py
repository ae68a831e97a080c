"""Files that name their colour space without embedding an ICC profile: camera JPEGs
whose EXIF says Adobe RGB (the DCF rule), HEIF/AVIF with a CICP (nclx) description."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffbir.errors import DiffBIRWarning
from diffbir.imaging import heif, profiles
from diffbir.imaging.icc_build import cicp_profile, make_profile
from diffbir.imaging.io import read_image, write_image

ADOBE = make_profile("Adobe RGB (1998)")
# A saturated green that sRGB cannot hold, and a mid gray-brown it can.
PIXELS = np.array([[[30, 200, 60], [150, 120, 90]]], dtype=np.uint8).repeat(8, 0).repeat(4, 1)


def _camera_jpeg(path, colour_space=0xFFFF, index="R03"):
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "NIKON CORPORATION", "NIKON D850"
    sub = exif.get_ifd(0x8769)
    sub[0xA001] = colour_space
    if index is not None:
        sub[0xA005] = {1: index}
    Image.fromarray(PIXELS).save(path, exif=exif, quality=100, subsampling=0)
    return path


def _reread_exif(path):
    with Image.open(path) as img:
        exif = img.getexif()
        return exif.get_ifd(0x8769).get(0xA001), exif.get_ifd(0xA005).get(1), img.info


@pytest.mark.parametrize("colour_space,index", [(0xFFFF, "R03"), (2, None)])
def test_exif_adobe_rgb_jpeg_is_converted_as_adobe_rgb(tmp_path, colour_space, index):
    src = _camera_jpeg(tmp_path / "DSC_0001.JPG", colour_space, index)
    image = read_image(src)
    assert image.icc_profile == ADOBE
    # The same pixels with the profile embedded read the same, within a level.
    tagged = tmp_path / "tagged.jpg"
    with Image.open(src) as img:
        img.save(tagged, icc_profile=ADOBE, quality=100, subsampling=0)
    assert torch.equal(read_image(tagged).rgb, image.rgb)
    untagged = np.asarray(Image.open(src).convert("RGB"))
    as_srgb = np.round(image.rgb.numpy().transpose(1, 2, 0) * 255)
    assert np.abs(as_srgb[0, 4] - untagged[0, 4]).max() > 10  # the colours did move


def test_adobe_rgb_round_trip_keeps_colour_and_says_so_in_exif(tmp_path):
    src = _camera_jpeg(tmp_path / "DSC_0002.JPG")
    image = read_image(src)
    out = write_image(
        tmp_path / "out.png",
        image.rgb,
        icc_profile=profiles.output_profile(image.icc_profile, "input"),
        carry=image.metadata,
    )
    colour_space, index, info = _reread_exif(out)
    assert info["icc_profile"] == ADOBE and colour_space == 0xFFFF and index == "R03"
    back = np.asarray(Image.open(out).convert("RGB")).astype(int)
    # In-gamut colour within 1 level; the out-of-sRGB green is clipped on the way in.
    assert np.abs(back[0, 4] - PIXELS[0, 4]).max() <= 1
    assert back[0, 0, 1] >= PIXELS[0, 0, 1] - 12

    srgb_out = write_image(
        tmp_path / "srgb.jpg",
        image.rgb,
        icc_profile=profiles.output_profile(image.icc_profile, "srgb"),
        carry=image.metadata,
    )
    colour_space, index, info = _reread_exif(srgb_out)
    assert colour_space == 1 and index == "R98" and profiles.is_srgb(info["icc_profile"])


def test_srgb_exif_stays_srgb_and_a_wide_profile_makes_it_uncalibrated(tmp_path):
    src = _camera_jpeg(tmp_path / "a.jpg", colour_space=1, index="R98")
    image = read_image(src)
    assert image.icc_profile is None
    out = write_image(tmp_path / "a.png", image.rgb, carry=image.metadata)
    assert _reread_exif(out)[:2] == (1, "R98")
    wide = write_image(tmp_path / "b.png", image.rgb, icc_profile=ADOBE, carry=image.metadata)
    colour_space, index, _ = _reread_exif(wide)
    assert colour_space == 0xFFFF and index is None


def test_is_srgb():
    assert profiles.is_srgb(None) and profiles.is_srgb(profiles.srgb_profile())
    assert not profiles.is_srgb(ADOBE) and not profiles.is_srgb(make_profile("Display P3"))


def test_cicp_profiles():
    assert cicp_profile(1, 13) is None  # sRGB itself
    assert cicp_profile(12, 99) is None and cicp_profile(99, 13) is None
    p3 = cicp_profile(12, 13)
    # The CICP P3 profile converts like the named Display P3 one.
    rgb = np.array([[[0.2, 0.8, 0.3]]], dtype=np.float32)
    a = profiles.to_srgb_array(rgb, p3)
    b = profiles.to_srgb_array(rgb, make_profile("Display P3"))
    assert np.abs(a - b).max() < 1e-4
    assert profiles.describe(cicp_profile(9, 1)).startswith("BT.2020")


def _nclx_heic(path, pillow_heif, primaries, transfer):
    pillow_heif.from_pillow(Image.fromarray(PIXELS)).save(
        path, quality=-1, color_primaries=primaries, transfer_characteristics=transfer
    )
    return path


def test_heic_with_cicp_p3_is_converted_as_p3(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    src = _nclx_heic(tmp_path / "p3.heic", pillow_heif, 12, 13)
    image = read_image(src)
    assert image.icc_profile is not None and profiles.describe(image.icc_profile).startswith(
        "Display P3"
    )
    # The colr box is read from the file too (how AVIF files opened by Pillow are seen).
    assert heif.cicp(Image.new("RGB", (1, 1)), src) == (12, 13)


def test_hdr_heic_is_read_as_sdr_with_a_note(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    src = _nclx_heic(tmp_path / "hdr.heic", pillow_heif, 9, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(src)
    assert image.icc_profile is None
    notes = [str(w.message) for w in caught if issubclass(w.category, DiffBIRWarning)]
    assert len(notes) == 1 and "PQ" in notes[0] and notes[0].startswith("hdr.heic:")
