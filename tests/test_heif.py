"""HEIC/HEIF inputs (pillow-heif, the diffbir[heif] extra) and AVIF (Pillow's own plugin)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, features

from diffbir.cli import main
from diffbir.errors import ImageReadError
from diffbir.imaging import heif, profiles
from diffbir.imaging.icc_build import make_profile
from diffbir.imaging.io import read_image, read_image_size

RED_SRGB = np.array([[[200, 40, 40]]], dtype=np.uint8)


def _iphone_heic(path, pillow_heif):
    """A phone's HEIC: Display P3, stored sideways with EXIF orientation 6, camera EXIF."""
    p3 = make_profile("Display P3")
    pixels = np.zeros((24, 40, 3), dtype=np.uint8)
    pixels[:, :20] = profiles.from_srgb_image(RED_SRGB, p3)[0, 0]  # left: red, the top once upright
    pixels[:, 20:] = profiles.from_srgb_image(np.array([[[40, 40, 200]]], np.uint8), p3)[0, 0]
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Apple", "iPhone 15", 6
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    pillow_heif.from_pillow(Image.fromarray(pixels)).save(
        path, exif=exif.tobytes(), icc_profile=p3, quality=100
    )
    return path, p3


def test_iphone_heic_restores_upright_with_its_colours(release, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    src, p3 = _iphone_heic(tmp_path / "IMG_0001.HEIC", pillow_heif)
    assert heif.container_kind(src) == "heif"
    assert read_image_size(src) == (40, 24)
    image = read_image(src)
    assert image.size == (40, 24) and image.icc_profile == p3
    top = np.round(image.rgb[:, 5, 12].numpy() * 255)
    bottom = np.round(image.rgb[:, 35, 12].numpy() * 255)
    assert np.abs(top - RED_SRGB[0, 0]).max() <= 6  # HEVC is lossy even at quality 100
    assert bottom[2] > 150 and bottom[0] < 90
    weights, config = release
    out = tmp_path / "out"
    code = main(
        [
            "restore",
            str(src),
            "-o",
            str(out),
            "--weights-dir",
            str(weights),
            "--model-config",
            str(config),
            "--steps",
            "2",
            "--min-side",
            "64",
            "--no-download",
            "-q",
            "--version",
            "v2",
            "--upscale",
            "1",
            "-f",
            "jpg",
        ]
    )
    assert code == 0
    with Image.open(out / "IMG_0001.jpg") as result:
        assert result.size == (24, 40)
        assert result.info["icc_profile"] == p3
        exif = result.getexif()
        assert exif.get(0x0112, 1) == 1 and exif[0x0110] == "iPhone 15"
        assert exif.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"


def test_missing_plugin_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    pillow_heif = pytest.importorskip("pillow_heif")
    src, _ = _iphone_heic(tmp_path / "a.heic", pillow_heif)
    import builtins

    real_import = builtins.__import__

    def no_heif(name, *args, **kwargs):
        if name == "pillow_heif":
            raise ImportError("no pillow_heif")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_heif)
    with pytest.raises(ImageReadError) as err:
        read_image(src)
    message = str(err.value)
    assert "\n" not in message and "diffbir[heif]" in message and message.startswith("a.heic:")


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF plugin")
def test_avif_is_read_by_pillow(tmp_path):
    src = tmp_path / "photo.avif"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.repeat(np.repeat(RED_SRGB, 8, 0), 16, 1)).save(src, exif=exif, quality=100)
    assert heif.container_kind(src) == "avif" and not heif.needs_heif_plugin(src)
    assert read_image(src).size == (16, 8)  # upright


def test_ten_bit_heic_keeps_its_levels_upright_and_restores_to_16_bits(release, tmp_path):
    """A 10-bit HEIC (phones' HDR/"HEIF 10-bit" captures) is read with its 1024 levels,
    not cut to 256, turned upright by libheif, converted from Display P3, and restored
    to a 16-bit PNG by ``--bit-depth auto``."""
    pillow_heif = pytest.importorskip("pillow_heif")
    p3 = make_profile("Display P3")
    # 24 rows x 40 columns of 960 distinct 10-bit values, stored sideways (orientation 6).
    ten_bit = np.arange(960, dtype=np.uint16).reshape(24, 40)
    stored = np.repeat(ten_bit[:, :, None], 3, axis=2) << 6  # pillow-heif's 16-bit packing
    exif = Image.Exif()
    exif[0x0112], exif[0x0110] = 6, "iPhone 15"
    src = tmp_path / "IMG_0002.HEIC"
    heif_file = pillow_heif.from_bytes(mode="RGB;16", size=(40, 24), data=stored.tobytes())
    heif_file.save(src, quality=-1, exif=exif.tobytes(), icc_profile=p3)  # lossless
    assert pillow_heif.open_heif(src, convert_hdr_to_8bit=False).info["bit_depth"] == 10

    image = read_image(src)
    assert image.size == (40, 24) and image.bit_depth == 16 and image.icc_profile == p3
    levels = np.unique(np.round(image.rgb[0].numpy() * 65535))
    assert len(levels) == 960  # 8-bit decoding would leave at most 256
    # Upright: orientation 6 turns the stored top row into the right-hand column.
    upright = np.rot90(ten_bit, k=-1) / 1023.0
    gray_p3 = np.repeat(np.round(upright * 65535).astype(np.uint16)[:, :, None], 3, axis=2)
    expected = profiles.to_srgb_array(gray_p3.astype(np.float32) / 65535, p3, "ramp")
    assert np.abs(image.rgb.numpy().transpose(1, 2, 0) - expected).max() < 2 / 1023

    weights, config = release
    out = tmp_path / "out"
    args = ["restore", str(src), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--steps", "2", "--min-side", "64"]
    args += ["--no-download", "-q", "--version", "v2", "--upscale", "1", "-f", "png"]
    assert main(args) == 0
    with Image.open(out / "IMG_0002.png") as result:
        assert result.size == (24, 40) and result.info["icc_profile"] == p3
        assert result.getexif().get(0x0112, 1) == 1
    import cv2

    assert cv2.imread(str(out / "IMG_0002.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
