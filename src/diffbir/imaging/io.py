"""Reading and writing image files as RGB tensors in [0, 1].

Decisions, so that callers need not guess:

* **Colour.** Every input becomes 3-channel RGB float32 in [0, 1]: grayscale is
  repeated, palette images are expanded, CMYK/YCbCr/LAB are converted by Pillow.
  16-bit PNG/TIFF keep their precision (values are divided by 65535; colour
  16-bit files are decoded with OpenCV because Pillow truncates them to 8 bits).
* **Colour profiles.** An embedded ICC profile is applied: the tensor is sRGB, what
  the models were trained on (:mod:`diffbir.imaging.profiles`; 16-bit images in
  float). No profile means sRGB. The profile is kept in :attr:`LoadedImage.icc_profile`
  and :func:`write_image` converts the result back into the profile it is given.
* **Metadata.** EXIF, XMP and IPTC are kept in :attr:`LoadedImage.metadata` and
  :func:`write_image` writes the blocks it is given where the format holds them
  (:mod:`diffbir.imaging.metadata`, :mod:`diffbir.imaging.encoders`).
* **HEIC/HEIF and AVIF** are read through :mod:`diffbir.imaging.heif` (pillow-heif,
  the optional extra ``diffbir[heif]``; AVIF by Pillow where it can).
* **Orientation.** The EXIF orientation tag is applied, so the tensor is the
  image as a viewer shows it.
* **Transparency.** ``rgb`` is the colour composited over white, so whatever
  colour hides under fully transparent pixels never leaks into the restoration.
  The alpha channel is returned separately (``keep_alpha=True``) and
  :func:`write_image` re-attaches it: PNG/WebP/TIFF keep it (the colour is
  un-composited from white, so the file looks the same over any background),
  JPEG/BMP have no alpha and get the white-composited colour as is. The alpha is
  resized (bicubic, antialiased) when the restored image is larger.
* **Refusals.** Unreadable inputs raise :class:`~diffbir.errors.ImageReadError`
  with a one-line ``"<file name>: <reason>"``: missing file, a directory, an
  empty file, not an image, a truncated or corrupt file (the image is fully
  decoded to find out), or more pixels than ``max_pixels`` (checked from the
  header before decoding). Pillow's own decompression-bomb limit is left as is;
  an image above it (about 179 megapixels) is refused with the same error.
* **Writing is atomic.** The file is encoded into a hidden temporary file in the
  target folder (``.NAME.<pid>-<hex>.tmp``), flushed to disk and renamed over the
  target, so an interrupted write never leaves a half-written image; the temporary
  file is removed on any exception, Ctrl+C included. One that a killed process
  left behind is removed by :func:`diffbir.imaging.atomic.remove_stale_temp_files` (``diffbir restore``
  calls it as a run starts).
* **Messages** name files through :func:`diffbir.errors.printable` (control
  characters escaped), so every error stays on one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from diffbir.errors import ImageReadError, printable
from diffbir.imaging import encoders, heif, profiles
from diffbir.imaging.atomic import ImageWriteError, atomic_write
from diffbir.imaging.icc_build import implied_profile
from diffbir.imaging.metadata import (
    SourceMetadata,
    exif_for_output,
    read_metadata,
    xmp_for_output,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "WRITE_FORMATS",
    "ImageWriteError",
    "LoadedImage",
    "read_image",
    "read_image_size",
    "resize_alpha",
    "to_batch",
    "write_image",
]

#: Default ceiling on width x height of an input (100 megapixels).
DEFAULT_MAX_PIXELS = 100_000_000

#: Output suffix -> (Pillow format name, whether the format stores alpha).
WRITE_FORMATS: dict[str, tuple[str, bool]] = {
    ".png": ("PNG", True),
    ".jpg": ("JPEG", False),
    ".jpeg": ("JPEG", False),
    ".webp": ("WEBP", True),
    ".tif": ("TIFF", True),
    ".tiff": ("TIFF", True),
    ".bmp": ("BMP", False),
    ".avif": ("AVIF", True),  # where the installed Pillow has AVIF
}

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class LoadedImage:
    """An image file decoded for restoration.

    Attributes:
        rgb: float32 ``[3, H, W]`` in [0, 1], composited over white.
        alpha: float32 ``[1, H, W]`` in [0, 1], or ``None`` when the file has no
            transparency (or it was not asked for).
        path: the file it came from.
        bit_depth: 8, or 16 when the file stores more than 8 bits per sample.
        icc_profile: the file's embedded ICC profile (already applied to ``rgb``), or
            ``None`` (sRGB).
        metadata: the file's EXIF, XMP and IPTC blocks.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    path: Path
    bit_depth: int
    icc_profile: bytes | None = None
    metadata: SourceMetadata = SourceMetadata()

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the image."""
        return int(self.rgb.shape[-2]), int(self.rgb.shape[-1])


def to_batch(image: LoadedImage | torch.Tensor) -> torch.Tensor:
    """Return the RGB of ``image`` as a ``[1, 3, H, W]`` batch."""
    rgb = image.rgb if isinstance(image, LoadedImage) else image
    return rgb.unsqueeze(0) if rgb.dim() == 3 else rgb


# ---------------------------------------------------------------- reading


def _fail(path: Path, reason: str) -> ImageReadError:
    one_line = " ".join(str(reason).split())
    return ImageReadError(f"{printable(path.name)}: {one_line}")


def _rawmode(img: Image.Image) -> str:
    """The packing Pillow decodes from, e.g. ``'RGB;16B'`` for a 16-bit RGB PNG."""
    tile = getattr(img, "tile", None)  # a decoded image (HEIF) has none
    if not tile:
        return ""
    args = tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _is_wide_colour(img: Image.Image) -> bool:
    """True for colour/alpha images with 16-bit samples, which Pillow cuts to 8 bits."""
    return ";16" in _rawmode(img) and not img.mode.startswith("I")


def _orient_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an ``[H, W, C]`` array, as a viewer would."""
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, k=1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(array)) if op else array


def _decode_wide_colour(path: Path, orientation: int) -> np.ndarray:
    """Decode a 16-bit colour PNG/TIFF with OpenCV; returns RGB(A) uint16 ``[H, W, C]``."""
    import cv2  # only needed for 16-bit colour files

    data = np.fromfile(path, dtype=np.uint8)  # fromfile+imdecode copes with any path
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16:
        raise _fail(path, "cannot decode this 16-bit image")
    if array.ndim == 2:
        array = array[:, :, None]
    channels = array.shape[2]
    if channels == 3:
        array = array[:, :, ::-1]
    elif channels == 4:
        array = array[:, :, [2, 1, 0, 3]]
    return _orient_array(array, orientation)


def _pillow_to_array(img: Image.Image) -> tuple[np.ndarray, int]:
    """Turn a decoded Pillow image into ``([H, W, C] float32 in [0, 1], bit_depth)``.

    ``C`` is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    """
    mode = img.mode
    if mode.startswith("I;16"):
        return np.asarray(img, dtype=np.float32)[:, :, None] / 65535.0, 16
    if mode == "I":
        # 32-bit integer samples: taken as 16-bit data (how such PNG/TIFF files arise).
        values = np.clip(np.asarray(img, dtype=np.float32), 0, 65535)
        return values[:, :, None] / 65535.0, 16
    if mode == "F":
        values = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return values[:, :, None], 16

    has_transparency = "transparency" in img.info
    if mode in ("L", "1"):
        img = img.convert("LA" if has_transparency else "L")
    elif mode == "LA":
        pass
    elif mode in ("RGB", "RGBA"):
        if mode == "RGB" and has_transparency:
            img = img.convert("RGBA")
    elif mode in ("P", "PA"):
        img = img.convert("RGBA" if has_transparency or mode == "PA" else "RGB")
    elif mode in ("RGBa", "La"):
        img = img.convert("RGBA" if mode == "RGBa" else "LA")  # undo premultiplication
    else:  # CMYK, YCbCr, LAB, HSV, ...
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return array, 8


def _split_channels(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``[H, W, C]`` with C in 1..4 -> (``[H, W, 3]`` colour, ``[H, W, 1]`` alpha or None)."""
    channels = array.shape[2]
    if channels == 1:
        return np.repeat(array, 3, axis=2), None
    if channels == 2:
        return np.repeat(array[:, :, :1], 3, axis=2), array[:, :, 1:]
    if channels == 3:
        return array, None
    return array[:, :, :3], array[:, :, 3:]


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_alpha: bool = True,
) -> LoadedImage:
    """Read an image file into an RGB tensor in [0, 1] (see the module notes).

    Args:
        path: the file (PNG, JPEG, WebP, BMP, TIFF, or anything Pillow opens).
        max_pixels: refuse images with more pixels than this, before decoding.
        keep_alpha: return the alpha channel when the file has one.

    Raises:
        ImageReadError: the file is missing, not an image, corrupt, or too large.
    """
    path = Path(path)
    try:
        _check_file(path)
        array, bit_depth, icc, metadata = _read_array(path, max_pixels)
    except ImageReadError:
        raise
    except PermissionError:
        raise _fail(path, "permission denied") from None
    except MemoryError:
        raise _fail(path, "not enough memory to decode this image") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file to the user
        raise _fail(path, f"corrupt or truncated image ({type(err).__name__}: {err})") from None

    colour, alpha = _split_channels(array)
    if alpha is not None:
        # Composite over white: hidden colour under transparent pixels must not matter.
        colour = colour * alpha + (1.0 - alpha)
    rgb = torch.from_numpy(np.ascontiguousarray(colour.transpose(2, 0, 1), dtype=np.float32))
    alpha_t = None
    if alpha is not None and keep_alpha:
        alpha_t = torch.from_numpy(np.ascontiguousarray(alpha.transpose(2, 0, 1), dtype=np.float32))
    return LoadedImage(
        rgb=rgb.clamp_(0.0, 1.0),
        alpha=alpha_t,
        path=path,
        bit_depth=bit_depth,
        icc_profile=icc,
        metadata=metadata,
    )


def _check_file(path: Path) -> None:
    """The refusals every reader shares: missing, a folder, empty."""
    if not path.exists():
        raise _fail(path, "no such file")
    if path.is_dir():
        raise _fail(path, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise _fail(path, "empty file (0 bytes)")


def read_image_size(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """``(height, width)`` of an image file as :func:`read_image` would return it (the
    EXIF orientation applied), from its header alone: cheap, for planning a batch.

    Raises:
        ImageReadError: the file is missing, a folder, empty, not an image, or has
            more pixels than ``max_pixels`` (corrupt pixel data is found only by
            :func:`read_image`).
    """
    path = Path(path)
    try:
        _check_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if heif.needs_heif_plugin(path):
                width, height = heif.heif_size(path)
                orientation = 1  # libheif turns the image upright itself
                img = None
            else:
                img = Image.open(path)
            with img or contextlib.nullcontext():
                if img is not None:
                    width, height = img.size
                    try:
                        orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
                    except Exception:  # noqa: BLE001 - a broken EXIF block is read as upright
                        orientation = 1
    except ImageReadError:
        raise
    except Image.DecompressionBombError:
        raise _fail(path, "image is too large to decode safely") from None
    except Image.UnidentifiedImageError:
        raise _fail(path, "not a recognised image file") from None
    except PermissionError:
        raise _fail(path, "permission denied") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file to the user
        raise _fail(path, f"corrupt or truncated image ({type(err).__name__}: {err})") from None
    if width < 1 or height < 1:
        raise _fail(path, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise _fail(
            path,
            f"image is {width}x{height} ({width * height / 1e6:.1f} megapixels), "
            f"above the limit of {max_pixels / 1e6:.1f} megapixels",
        )
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _read_array(
    path: Path, max_pixels: int
) -> tuple[np.ndarray, int, bytes | None, SourceMetadata]:
    """Decode ``path``: (sRGB pixels ``[H, W, C]`` in [0, 1], bit depth, the embedded
    ICC profile, the metadata blocks)."""
    with warnings.catch_warnings():
        # We enforce our own limit below; Pillow's bomb warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img, wide = (
                heif.open_heif(path) if heif.needs_heif_plugin(path) else (Image.open(path), None)
            )
        except Image.DecompressionBombError:
            raise _fail(path, "image is too large to decode safely") from None
        except Image.UnidentifiedImageError:
            raise _fail(path, "not a recognised image file") from None
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise _fail(path, f"image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise _fail(
                    path,
                    f"image is {width}x{height} ({width * height / 1e6:.1f} megapixels), "
                    f"above the limit of {max_pixels / 1e6:.1f} megapixels",
                )
            wide_colour = _is_wide_colour(img)
            img.load()  # full decode: truncated or corrupt data fails here
            icc = img.info.get("icc_profile") or implied_profile(img, path)
            metadata = read_metadata(img)
            if wide is not None:  # a 10/12-bit HEIF, already upright
                return _wide_to_srgb(wide, icc, path), 16, icc, metadata
            if wide_colour:
                orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
                array = _decode_wide_colour(path, orientation).astype(np.float32) / 65535.0
                return _wide_to_srgb(array, icc, path), 16, icc, metadata
            try:
                oriented = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
                oriented = img
            if icc and not oriented.mode.startswith(("I", "F")):
                oriented = profiles.to_srgb_image(oriented, icc, printable(path.name))
                array, bit_depth = _pillow_to_array(oriented)
            else:
                array, bit_depth = _pillow_to_array(oriented)
                if icc:
                    array = _wide_to_srgb(array, icc, path)
            return array, bit_depth, icc, metadata


def _wide_to_srgb(array: np.ndarray, icc: bytes | None, path: Path) -> np.ndarray:
    """16-bit ``[H, W, C]`` (gray or RGB, with or without alpha) into sRGB, in float."""
    if not icc:
        return array
    colour_channels = 1 if array.shape[2] in (1, 2) else 3
    colour = profiles.to_srgb_array(array[:, :, :colour_channels], icc, printable(path.name))
    return np.concatenate([colour, array[:, :, colour_channels:]], axis=2)


# ---------------------------------------------------------------- writing


def resize_alpha(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an alpha matte ``[1, H, W]`` (or ``[N, 1, H, W]``) to ``size = (H, W)``.

    Bicubic with antialiasing, clamped to [0, 1].
    """
    batch = alpha.unsqueeze(0) if alpha.dim() == 3 else alpha
    if tuple(batch.shape[-2:]) == tuple(size):
        return alpha
    out = F.interpolate(
        batch.float(), size=size, mode="bicubic", antialias=True, align_corners=False
    )
    out = out.clamp_(0.0, 1.0).to(alpha.dtype)
    return out[0] if alpha.dim() == 3 else out


def _as_chw(rgb: torch.Tensor) -> torch.Tensor:
    if rgb.dim() == 4:
        if rgb.shape[0] != 1:
            raise ValueError(f"write_image takes one image, got a batch of {rgb.shape[0]}")
        rgb = rgb[0]
    if rgb.dim() != 3 or rgb.shape[0] != 3:
        raise ValueError(f"write_image needs RGB [3, H, W] or [1, 3, H, W], got {tuple(rgb.shape)}")
    return rgb


def _quantise(x: torch.Tensor, bit_depth: int) -> np.ndarray:
    """``[C, H, W]`` float -> ``[H, W, C]`` uint8/uint16, clamped and rounded."""
    top = 65535.0 if bit_depth == 16 else 255.0
    x = torch.nan_to_num(x.detach().float().cpu(), nan=0.0).clamp(0.0, 1.0)
    values = (x * top).round().permute(1, 2, 0).contiguous().numpy()
    return values.astype(np.uint16 if bit_depth == 16 else np.uint8)


def write_image(
    path: str | os.PathLike[str],
    rgb: torch.Tensor,
    *,
    alpha: torch.Tensor | None = None,
    quality: int = 95,
    bit_depth: int = 8,
    metadata: dict[str, str] | None = None,
    icc_profile: bytes | None = None,
    carry: SourceMetadata | None = None,
) -> Path:
    """Write ``rgb`` (``[3, H, W]`` or ``[1, 3, H, W]`` sRGB in [0, 1]) to ``path`` atomically.

    ``metadata`` (how the image was made) goes into PNG text chunks; for
    other formats into ``<path>.json`` beside the image. The pixels are converted
    from sRGB into ``icc_profile`` (an RGB ICC profile; ``None``: sRGB), which is
    embedded (BMP: none); ``carry``'s EXIF, XMP and IPTC go where the format
    holds them, the orientation set upright and the size tags to this image's.

    Args:
        path: output file; the suffix picks the format (``.png .jpg .jpeg .webp
            .tif .tiff .bmp``). Missing parent folders are created.
        rgb: the image, composited over white as :func:`read_image` returns it.
            Values are clamped to [0, 1] and rounded.
        alpha: optional ``[1, h, w]`` matte; resized to the image when sizes
            differ, and stored when the format has alpha (dropped otherwise).
        quality: JPEG/WebP quality (WebP at 100 is lossless).
        bit_depth: 8, or 16 for PNG/TIFF.
        icc_profile: the profile to write the pixels in (see
            :func:`diffbir.imaging.profiles.output_profile`).
        carry: the input's metadata to carry over (``None``: none).

    Returns:
        The written path.

    Raises:
        ImageWriteError: unknown suffix, unsupported bit depth, or the file
            system refused the write.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_FORMATS:
        known = " ".join(sorted(WRITE_FORMATS))
        raise ImageWriteError(
            f"{printable(path.name)}: unknown image format {suffix or '(no suffix)'!r}; "
            f"use one of {known}"
        )
    pillow_format, stores_alpha = WRITE_FORMATS[suffix]
    if bit_depth not in (8, 16):
        raise ImageWriteError(f"{printable(path.name)}: bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and pillow_format not in ("PNG", "TIFF"):
        raise ImageWriteError(
            f"{printable(path.name)}: 16-bit output needs .png or .tif, not {printable(suffix)}"
        )
    if pillow_format == "AVIF" and not _has_avif():
        raise ImageWriteError(
            f"{printable(path.name)}: this Pillow cannot write AVIF; use .png, .jpg, .webp or .tif"
        )
    if not 1 <= quality <= 100:
        raise ImageWriteError(
            f"{printable(path.name)}: quality must be within 1..100, got {quality}"
        )

    rgb = _as_chw(rgb).detach().float().cpu()
    colour = rgb
    matte = None
    if alpha is not None and stores_alpha:
        matte = resize_alpha(
            alpha.detach().float().cpu().reshape(1, *alpha.shape[-2:]), tuple(rgb.shape[-2:])
        )
        colour = rgb.clamp(0.0, 1.0)
        # Undo the composite over white, so the file looks right on any background.
        visible = matte > 0.5 / 255.0
        uncomposited = (colour - (1.0 - matte)) / matte.clamp_min(1e-6)
        colour = torch.where(visible, uncomposited, colour)
    pixels = _in_profile(_quantise(colour, bit_depth) if bit_depth == 8 else colour, icc_profile)
    if bit_depth == 16:
        pixels = _quantise(torch.from_numpy(pixels).permute(2, 0, 1), 16)
    if matte is not None:
        pixels = np.concatenate([pixels, _quantise(matte, bit_depth)], axis=2)
    height, width = pixels.shape[:2]
    with_chunks = metadata if pillow_format == "PNG" else None
    embedded = encoders.Embedded(
        icc=None if pillow_format == "BMP" else (icc_profile or profiles.srgb_profile()),
        exif=(
            exif_for_output(carry.exif, width, height, srgb=profiles.is_srgb(icc_profile))
            if carry
            else None
        ),
        xmp=xmp_for_output(carry.xmp) if carry else None,
        iptc=carry.iptc if carry and pillow_format in ("JPEG", "TIFF") else None,
        text=with_chunks,
    )

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            path,
            lambda f: encoders.encode(f, pixels, pillow_format, suffix, quality, embedded),
        )
        if metadata and with_chunks is None:
            text = json.dumps(metadata, indent=1, ensure_ascii=False) + "\n"
            sidecar = path.with_name(path.name + ".json")
            atomic_write(sidecar, lambda f: f.write(text.encode("utf-8")))
    except ImageWriteError:
        raise
    except encoders.EncodeError as err:
        raise ImageWriteError(f"{printable(path.name)}: {err}") from None
    except OSError as err:
        reason = printable(err.strerror or err)
        raise ImageWriteError(f"{printable(path.name)}: cannot write ({reason})") from None
    return path


def _has_avif() -> bool:
    from PIL import features

    return bool(features.check("avif"))


def _in_profile(colour: np.ndarray | torch.Tensor, icc: bytes | None) -> np.ndarray:
    """sRGB colour into ``icc``: uint8 ``[H, W, 3]`` through ImageCms, or a float
    ``[3, H, W]`` tensor in float (returned ``[H, W, 3]`` float32)."""
    if isinstance(colour, np.ndarray):
        return profiles.from_srgb_image(colour, icc) if icc else colour
    array = torch.nan_to_num(colour, nan=0.0).clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    return profiles.from_srgb_array(array, icc) if icc else array


def read_mask(path: str | os.PathLike[str], **kwargs) -> torch.Tensor:
    """A grey-level mask file as a ``[1, 1, H, W]`` float tensor in [0, 1].

    Colour files are averaged over their channels; transparent pixels count as black.
    Errors as :func:`read_image` (one line naming the file).
    """
    image = read_image(path, **kwargs)
    grey = image.rgb.mean(dim=0, keepdim=True)
    if image.alpha is not None:
        grey = grey * image.alpha
    return grey.unsqueeze(0)
