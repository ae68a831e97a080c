"""The photo's metadata (EXIF, XMP, IPTC) carried from the input to the restored files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from diffbir.cli import main
from diffbir.imaging.icc_build import make_profile
from diffbir.imaging.io import read_image, write_image
from diffbir.imaging.metadata import SourceMetadata, exif_for_output, xmp_for_output

DATE = "2019:07:14 16:03:21"
MAKE, MODEL = "FUJIFILM", "X-T3"
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
    b'xmlns:exif="http://ns.adobe.com/exif/1.0/" tiff:Orientation="6" '
    b'exif:GPSLatitude="48,51.5N"><dc:description>Grandmother, 1952</dc:description>'
    b"<exif:GPSLongitude>2,21.0E</exif:GPSLongitude></rdf:Description></rdf:RDF></x:xmpmeta>"
)
# IPTC-IIM: record 2, dataset 120 (caption), 16 bytes.
IPTC = b"\x1c\x02\x78\x00\x10" + b"family archive 1"


def _exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = MAKE, MODEL, orientation
    exif[0x013B] = "A. Photographer"  # Artist
    exif.get_ifd(0x8769)[0x9003] = DATE  # DateTimeOriginal
    exif.get_ifd(0x8769)[0xA002], exif.get_ifd(0x8769)[0xA003] = 40, 24
    exif.get_ifd(0x8825)[1], exif.get_ifd(0x8825)[2] = "N", (48.0, 51.0, 30.0)
    return exif


def _camera_jpeg(path, size=(40, 24), icc=None):
    """A camera JPEG stored sideways (orientation 6), with EXIF, XMP, IPTC and GPS."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    pixels[:, : size[0] // 2] = (200, 40, 40)  # the left half red: the top once upright
    image = Image.fromarray(pixels)
    options = {"icc_profile": icc} if icc else {}
    image.save(path, exif=_exif(), xmp=XMP, quality=95, **options)
    # Pillow writes no IPTC: add the APP13 block the way archives' tools do.
    from diffbir.imaging.encoders import _with_app13

    path.write_bytes(_with_app13(path.read_bytes(), IPTC))
    return path


def _read_back(path):
    with Image.open(path) as img:
        img.load()
        exif = img.getexif()
        xmp = (
            img.info.get("xmp")
            or img.info.get("XML:com.adobe.xmp")
            or getattr(img, "tag_v2", {}).get(700)
        )
        if isinstance(xmp, str):
            xmp = xmp.encode()
        iptc = None
        if img.format == "JPEG":
            iptc = (img.info.get("photoshop") or {}).get(0x0404)
        elif img.format == "TIFF":
            iptc = img.tag_v2.get(33723)
        return img.size, exif, xmp, iptc, img.info.get("icc_profile")


def test_read_keeps_the_blocks(tmp_path):
    src = _camera_jpeg(tmp_path / "cam.jpg")
    image = read_image(src)
    assert image.size == (40, 24)  # upright: 24 wide, 40 high
    assert image.rgb[:, 0, 10].tolist() == pytest.approx([200 / 255, 40 / 255, 40 / 255], abs=0.03)
    meta = image.metadata
    assert meta.xmp == XMP and meta.iptc == IPTC and meta.exif


def test_output_exif_is_upright_and_sized():
    data = exif_for_output(_exif().tobytes(), 96, 160)
    assert data[0x0112] == 1
    assert data.get_ifd(0x8769)[0xA002] == 96 and data.get_ifd(0x8769)[0xA003] == 160
    assert data.get_ifd(0x8769)[0x9003] == DATE
    assert b'tiff:Orientation="1"' in xmp_for_output(XMP)


def test_gps_is_dropped_from_exif_and_xmp():
    meta = SourceMetadata(exif=_exif().tobytes(), xmp=XMP, iptc=IPTC).without_gps()
    exif = Image.Exif()
    exif.load(meta.exif)
    assert not exif.get_ifd(0x8825)
    assert exif[0x010F] == MAKE and exif.get_ifd(0x8769)[0x9003] == DATE
    assert b"GPS" not in meta.xmp and b"Grandmother, 1952" in meta.xmp


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp"])
def test_write_carries_date_camera_xmp_and_iptc(tmp_path, suffix):
    image = read_image(_camera_jpeg(tmp_path / "cam.jpg"))
    out = write_image(tmp_path / f"out{suffix}", image.rgb, carry=image.metadata.without_gps())
    size, exif, xmp, iptc, icc = _read_back(out)
    assert size == (24, 40)
    assert exif[0x010F] == MAKE and exif[0x0110] == MODEL
    assert exif.get_ifd(0x8769)[0x9003] == DATE
    assert exif.get(0x0112, 1) == 1
    assert not exif.get_ifd(0x8825)
    assert b"Grandmother, 1952" in xmp and b"GPS" not in xmp
    assert iptc == (IPTC if suffix in (".jpg", ".tif") else None)  # PNG/WebP have no place
    assert icc  # tagged sRGB


def test_sixteen_bit_png_and_tiff_carry_metadata(tmp_path):
    image = read_image(_camera_jpeg(tmp_path / "cam.jpg"))
    for suffix in (".png", ".tif"):
        out = write_image(
            tmp_path / f"deep{suffix}",
            image.rgb,
            bit_depth=16,
            carry=image.metadata,
            metadata={"software": "diffbir"},
        )
        _, exif, xmp, _, icc = _read_back(out)
        assert exif.get_ifd(0x8769)[0x9003] == DATE and exif[0x0110] == MODEL
        assert exif.get_ifd(0x8825)[1] == "N"  # kept when asked
        assert b"Grandmother" in xmp and icc
        assert read_image(out).bit_depth == 16
    with Image.open(tmp_path / "deep.png") as img:
        assert img.info["software"] == "diffbir"  # our own settings, in text chunks


def test_jpeg_keeps_full_chroma_at_high_quality(tmp_path):
    rgb = torch.rand(3, 32, 32)
    high = write_image(tmp_path / "q95.jpg", rgb, quality=95)
    low = write_image(tmp_path / "q80.jpg", rgb, quality=80)
    assert JpegImagePlugin.get_sampling(Image.open(high)) == 0  # 4:4:4
    assert JpegImagePlugin.get_sampling(Image.open(low)) == 2  # 4:2:0


def _restore(release, inputs, out, *extra):
    weights, config = release
    args = ["restore", *map(str, inputs), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--steps", "2", "--min-side", "64"]
    args += ["--no-download", "-q", "--version", "v2", "--upscale", "2", *extra]
    return main(args)


@pytest.mark.parametrize("fmt", ["jpg", "png", "tiff"])
def test_restore_carries_metadata_and_profile(release, tmp_path, fmt):
    icc = make_profile("Adobe RGB (1998)")
    src = _camera_jpeg(tmp_path / "cam.jpg", icc=icc)
    assert _restore(release, [src], tmp_path / "out", "-f", fmt, "--save-stage1", "--compare") == 0
    for kind in ("", "stage1/", "compare/"):
        path = tmp_path / "out" / f"{kind}cam.{fmt}"
        size, exif, xmp, iptc, out_icc = _read_back(path)
        assert out_icc == icc  # written back in the input's profile
        assert exif[0x010F] == MAKE and exif.get_ifd(0x8769)[0x9003] == DATE
        assert exif.get(0x0112, 1) == 1 and not exif.get_ifd(0x8825)
    size, exif, *_ = _read_back(tmp_path / "out" / f"cam.{fmt}")
    assert size == (48, 80)
    assert exif.get_ifd(0x8769)[0xA002] == 48 and exif.get_ifd(0x8769)[0xA003] == 80


def test_restore_strip_metadata_and_keep_gps(release, tmp_path):
    src = _camera_jpeg(tmp_path / "cam.jpg")
    assert _restore(release, [src], tmp_path / "bare", "--strip-metadata") == 0
    _, exif, xmp, _, icc = _read_back(tmp_path / "bare" / "cam.png")
    assert 0x010F not in exif and not xmp and icc  # the profile stays
    with Image.open(tmp_path / "bare" / "cam.png") as img:
        assert img.info["software"] == "diffbir"  # our settings are still recorded
    assert _restore(release, [src], tmp_path / "gps", "--keep-gps") == 0
    _, exif, *_ = _read_back(tmp_path / "gps" / "cam.png")
    assert exif.get_ifd(0x8825)[1] == "N"
