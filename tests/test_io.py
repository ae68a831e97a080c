"""Image reading/writing: every input kind, every refusal, round trips, atomic writes."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from diffbir.errors import DiffBIRError, ImageReadError
from diffbir.imaging import io as imio
from diffbir.imaging.io import (
    ImageWriteError,
    LoadedImage,
    read_image,
    resize_alpha,
    to_batch,
    write_image,
)


def _rgb_array(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png(ihdr: bytes, idat: bytes) -> bytes:
    """A minimal PNG file from a raw IHDR body and compressed pixel rows."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _chw(array: np.ndarray, top: float = 255.0) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32).transpose(2, 0, 1) / top)


# ------------------------------------------------------------------ reading


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff", ".webp"])
def test_lossless_8bit_rgb_formats_read_exactly(tmp_path, suffix):
    pixels = _rgb_array()
    path = tmp_path / f"img{suffix}"
    options = {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(pixels).save(path, **options)
    img = read_image(path)
    assert isinstance(img, LoadedImage)
    assert img.rgb.shape == (3, 12, 16) and img.rgb.dtype == torch.float32
    assert img.alpha is None and img.bit_depth == 8 and img.path == path
    assert img.size == (12, 16)
    torch.testing.assert_close(img.rgb, _chw(pixels), atol=1e-7, rtol=0)


def test_jpeg_reads_close_to_source(tmp_path):
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :24] = (200, 40, 30)
    pixels[:, 24:] = (20, 90, 220)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    img = read_image(tmp_path / "a.jpg")
    assert img.rgb.shape == (3, 32, 48)
    assert (img.rgb - _chw(pixels)).abs().mean() < 0.02
    assert 0.0 <= img.rgb.min() and img.rgb.max() <= 1.0


def test_16bit_grayscale_png_keeps_precision(tmp_path):
    values = np.full((8, 10), 1000, np.uint16)
    values[0, 0] = 65535
    Image.fromarray(values).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.bit_depth == 16 and img.rgb.shape == (3, 8, 10)
    assert abs(img.rgb[1, 3, 3].item() - 1000 / 65535) < 1e-6
    assert img.rgb[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    # 1000/65535 is not an 8-bit level: an 8-bit decode would be off by > 1e-3.
    assert abs(img.rgb[0, 3, 3].item() * 255 - round(img.rgb[0, 3, 3].item() * 255)) > 0.01


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_colour_keeps_precision_and_channel_order(tmp_path, suffix):
    rgb = np.zeros((6, 7, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1000, 30000, 65000
    rgb[0, 0] = (1, 2, 3)
    path = tmp_path / f"c16{suffix}"
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])  # OpenCV writes BGR
    img = read_image(path)
    assert img.bit_depth == 16 and img.alpha is None
    torch.testing.assert_close(img.rgb, _chw(rgb, 65535.0), atol=1e-6, rtol=0)


def test_16bit_rgba_png_keeps_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint16)
    rgba[..., :3] = 20000
    rgba[..., 3] = 65535
    rgba[0, 0, 3] = 0
    assert cv2.imwrite(str(tmp_path / "a16.png"), rgba[:, :, [2, 1, 0, 3]])
    img = read_image(tmp_path / "a16.png")
    assert img.bit_depth == 16 and img.alpha is not None
    assert img.alpha[0, 0, 0].item() == 0.0 and img.alpha[0, 1, 1].item() == 1.0
    assert abs(img.rgb[0, 1, 1].item() - 20000 / 65535) < 1e-6
    assert img.rgb[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # transparent -> white


def test_16bit_gray_alpha_png(tmp_path):
    # Neither Pillow nor OpenCV writes 16-bit gray+alpha PNG: build one by hand.
    h, w = 3, 4
    la = np.zeros((h, w, 2), ">u2")
    la[..., 0] = 1000
    la[..., 1] = 65535
    la[0, 0, 1] = 0
    rows = b"".join(b"\x00" + la[y].tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    (tmp_path / "la16.png").write_bytes(_png(header, zlib.compress(rows)))
    img = read_image(tmp_path / "la16.png")
    assert img.bit_depth == 16 and img.rgb.shape == (3, h, w)
    assert (img.rgb[:, 1:] - 1000 / 65535).abs().max() < 1e-6
    assert img.alpha[0, 0, 0].item() == 0.0 and img.alpha[0, 1, 1].item() == 1.0
    assert img.rgb[:, 0, 0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_becomes_three_equal_channels(tmp_path, mode):
    gray = (np.arange(60, dtype=np.uint8).reshape(6, 10) * 4).astype(np.uint8)
    Image.fromarray(gray).convert(mode).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.rgb.shape == (3, 6, 10) and img.alpha is None
    torch.testing.assert_close(img.rgb[0], img.rgb[1], atol=0, rtol=0)
    torch.testing.assert_close(img.rgb[0], img.rgb[2], atol=0, rtol=0)
    if mode == "L":
        torch.testing.assert_close(img.rgb[0], torch.from_numpy(gray / 255.0).float())
    else:
        assert set(img.rgb.unique().tolist()) <= {0.0, 1.0}


def test_grayscale_alpha_composited_over_white(tmp_path):
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0] = 0  # black
    la[..., 1] = 255
    la[0, 0, 1] = 0
    la[0, 1, 1] = 128
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    assert img.alpha is not None and img.alpha.shape == (1, 4, 4)
    assert img.rgb[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert img.rgb[:, 1, 1].tolist() == [0.0, 0.0, 0.0]
    assert img.rgb[0, 0, 1].item() == pytest.approx(1 - 128 / 255, abs=1e-6)


def test_rgba_hidden_colour_does_not_leak(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = 255
    rgba[:2, :, :3] = (255, 0, 255)  # garbage colour ...
    rgba[:2, :, 3] = 0  # ... under full transparency
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    assert torch.equal(img.rgb[:, :2], torch.ones(3, 2, 4))
    torch.testing.assert_close(img.rgb[:, 3, 3], torch.tensor([10, 200, 30]) / 255.0)
    assert img.alpha[0, :2].sum() == 0 and torch.equal(img.alpha[0, 2:], torch.ones(2, 4))
    assert read_image(tmp_path / "rgba.png", keep_alpha=False).alpha is None


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (6, 4), 1)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "p.png", transparency=0)
    img = read_image(tmp_path / "p.png")
    assert img.alpha is not None
    assert img.alpha[0, 0, 0].item() == 0.0 and img.alpha[0, 1, 1].item() == 1.0
    assert img.rgb[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # red under alpha 0 -> white
    assert img.rgb[:, 1, 1].tolist() == [0.0, 0.0, 1.0]


def test_palette_without_transparency_has_no_alpha(tmp_path):
    Image.fromarray(_rgb_array()).convert("P").save(tmp_path / "p.bmp")
    img = read_image(tmp_path / "p.bmp")
    assert img.alpha is None and img.rgb.shape == (3, 12, 16)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    img = read_image(tmp_path / "cmyk.jpg")
    assert img.rgb.shape == (3, 16, 16)
    torch.testing.assert_close(
        img.rgb.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.03, rtol=0
    )


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "rot.jpg")
    assert img.rgb.shape == (3, 40, 20)
    # Rotating clockwise moves the stored left edge to the top.
    assert img.rgb[0, :15].mean() > 0.9 and img.rgb[2, :15].mean() < 0.1
    assert img.rgb[2, 25:].mean() > 0.9 and img.rgb[0, 25:].mean() < 0.1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_of_16bit_path_matches_pillow(orientation):
    # The 16-bit colour path orients arrays itself; it must agree with Pillow.
    pixels = _rgb_array(5, 7, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(buffer)))
    assert np.array_equal(imio._orient_array(pixels, orientation), expected)


# --------------------------------------------------------- reading refusals


def _one_line_error(path: Path, match: str, **kwargs) -> str:
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path.name}: ")
    return message


def test_missing_file(tmp_path):
    _one_line_error(tmp_path / "nope.png", "no such file")


def test_directory(tmp_path):
    (tmp_path / "folder.png").mkdir()
    _one_line_error(tmp_path / "folder.png", "directory")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    _one_line_error(tmp_path / "empty.jpg", "empty file")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("hello\nthis is text\n")
    _one_line_error(tmp_path / "notes.png", "not a recognised image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buffer = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(path, "corrupt or truncated")
    # Nothing global was switched on to get there.
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but carries a broken, tiny pixel stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return _png(ihdr, zlib.compress(b"\x00" * 64))


def test_too_many_pixels_refused_from_header(tmp_path):
    path = tmp_path / "huge.png"
    # 12000 x 12000 = 144 MP: above our 100 MP default, below Pillow's hard limit.
    # The pixel data is broken, so "too large" proves the check precedes decoding.
    path.write_bytes(_png_header_only(12000, 12000))
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape
        message = _one_line_error(path, "above the limit")
    assert "12000x12000" in message
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_custom_pixel_limit(tmp_path):
    Image.fromarray(_rgb_array(10, 10)).save(tmp_path / "small.png")
    _one_line_error(tmp_path / "small.png", "above the limit", max_pixels=99)
    assert read_image(tmp_path / "small.png", max_pixels=100).size == (10, 10)


def test_pillow_decompression_bomb_becomes_our_error(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))  # 900 MP: Pillow refuses to open
    _one_line_error(path, "too large", max_pixels=10**10)


# ------------------------------------------------------------------ writing


def test_png_round_trip_is_exact(tmp_path):
    pixels = _rgb_array(9, 13, seed=3)
    out = write_image(tmp_path / "rt.png", _chw(pixels))
    assert out == tmp_path / "rt.png"
    assert np.array_equal(np.asarray(Image.open(out)), pixels)
    torch.testing.assert_close(read_image(out).rgb, _chw(pixels), atol=0, rtol=0)


def test_write_clamps_and_rounds(tmp_path):
    rgb = torch.tensor([-0.5, 1.5, 100.4 / 255, 100.6 / 255, float("nan"), 0.5]).view(3, 1, 2)
    write_image(tmp_path / "q.png", rgb.unsqueeze(0))  # a batch of one is fine too
    values = np.asarray(Image.open(tmp_path / "q.png")).transpose(2, 0, 1).reshape(-1)
    assert values.tolist() == [0, 255, 100, 101, 0, 128]


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"])
def test_other_formats_write_readable_files(tmp_path, suffix):
    pixels = np.full((16, 16, 3), (30, 120, 210), np.uint8)
    out = write_image(tmp_path / f"o{suffix}", _chw(pixels))
    back = read_image(out)
    assert back.rgb.shape == (3, 16, 16)
    assert (back.rgb - _chw(pixels)).abs().max() < 0.02


def test_jpeg_quality_is_used(tmp_path):
    noise = _chw(_rgb_array(64, 64, seed=5))
    low = write_image(tmp_path / "low.jpg", noise, quality=30)
    high = write_image(tmp_path / "high.jpg", noise, quality=95)
    assert low.stat().st_size < high.stat().st_size


def test_webp_quality_100_is_lossless(tmp_path):
    pixels = _rgb_array(8, 8, seed=6)
    write_image(tmp_path / "l.webp", _chw(pixels), quality=100)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "l.webp").convert("RGB")), pixels)


def test_16bit_png_write_round_trip(tmp_path):
    rgb = torch.full((3, 4, 4), 1000 / 65535)
    write_image(tmp_path / "w16.png", rgb, bit_depth=16)
    back = read_image(tmp_path / "w16.png")
    assert back.bit_depth == 16
    assert (back.rgb - 1000 / 65535).abs().max() < 1e-6
    with pytest.raises(ImageWriteError, match="16-bit"):
        write_image(tmp_path / "w16.jpg", rgb, bit_depth=16)


def test_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(DiffBIRError, match=r"out\.gif: unknown image format '\.gif'"):
        write_image(tmp_path / "out.gif", torch.zeros(3, 2, 2))
    with pytest.raises(ImageWriteError, match="no suffix"):
        write_image(tmp_path / "out", torch.zeros(3, 2, 2))
    assert list(tmp_path.iterdir()) == []


def test_bad_tensor_shape_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="batch of 2"):
        write_image(tmp_path / "b.png", torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        write_image(tmp_path / "b.png", torch.zeros(4, 4, 4))


def test_alpha_round_trip_restores_original_rgba(tmp_path):
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 1
    rgba[2, :, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "src.png")
    img = read_image(tmp_path / "src.png")
    write_image(tmp_path / "dst.png", img.rgb, alpha=img.alpha)
    back = np.asarray(Image.open(tmp_path / "dst.png"))
    assert back.shape == (10, 12, 4)
    assert np.array_equal(back[..., 3], rgba[..., 3])
    visible = rgba[..., 3] > 0
    # Un-compositing from white gives the file's colours back, where they are visible.
    assert np.array_equal(back[visible][:, :3], rgba[visible][:, :3])


def test_alpha_is_resized_to_a_larger_output(tmp_path):
    alpha = torch.zeros(1, 8, 8)
    alpha[:, :, 4:] = 1.0
    rgb = torch.full((3, 32, 32), 0.25)
    write_image(tmp_path / "big.png", rgb, alpha=alpha)
    back = np.asarray(Image.open(tmp_path / "big.png"))
    assert back.shape == (32, 32, 4)
    assert (back[:, :12, 3] == 0).all() and (back[:, 20:, 3] == 255).all()
    assert (back[:, 20:, :3] == 64).all()


def test_alpha_dropped_for_jpeg(tmp_path):
    write_image(tmp_path / "a.jpg", torch.full((3, 8, 8), 0.5), alpha=torch.zeros(1, 8, 8))
    with Image.open(tmp_path / "a.jpg") as img:
        assert img.mode == "RGB"
        assert abs(np.asarray(img).astype(float).mean() - 127.5) < 2


def test_resize_alpha_shapes_and_range():
    alpha = torch.rand(1, 5, 7)
    out = resize_alpha(alpha, (20, 28))
    assert out.shape == (1, 20, 28) and 0 <= out.min() and out.max() <= 1
    assert resize_alpha(alpha.unsqueeze(0), (10, 14)).shape == (1, 1, 10, 14)
    assert resize_alpha(alpha, (5, 7)) is alpha


def test_write_creates_parent_folders(tmp_path):
    out = write_image(tmp_path / "a" / "b" / "c.png", torch.zeros(3, 2, 2))
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["c.png"]  # no temp file left


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_encoder(fileobj, *args, **kwargs):
        fileobj.write(b"\x89PNG half an image")
        raise RuntimeError("disk pulled out mid-write")

    monkeypatch.setattr(imio.encoders, "encode", broken_encoder)
    with pytest.raises(RuntimeError, match="mid-write"):
        write_image(tmp_path / "new.png", torch.zeros(3, 4, 4))
    assert list(tmp_path.iterdir()) == []

    # An existing output is left untouched by a failed overwrite.
    (tmp_path / "old.png").write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        write_image(tmp_path / "old.png", torch.zeros(3, 4, 4))
    assert (tmp_path / "old.png").read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]


def test_unwritable_target_gives_write_error(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(ImageWriteError, match="x.png: cannot write"):
        write_image(tmp_path / "blocker" / "x.png", torch.zeros(3, 2, 2))


def test_to_batch():
    rgb = torch.rand(3, 4, 5)
    img = LoadedImage(rgb=rgb, alpha=None, path=Path("x.png"), bit_depth=8)
    assert to_batch(img).shape == (1, 3, 4, 5)
    assert to_batch(rgb.unsqueeze(0)).shape == (1, 3, 4, 5)
