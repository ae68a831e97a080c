"""Encoding pixels into image files with their colour profile and metadata.

One function, :func:`encode`, per output: 8- or 16-bit pixels, the ICC profile they
are in, the photo's EXIF/XMP/IPTC (already prepared for the output, see
:mod:`diffbir.imaging.metadata`) and our own text (how the image was made).

* PNG 8-bit, JPEG, WebP, AVIF: Pillow (ICC, EXIF, XMP; PNG text chunks). JPEG at
  quality 90 and above keeps the chroma at full resolution (4:4:4); below, Pillow's
  4:2:0. IPTC goes into JPEG as a Photoshop APP13 block, which Pillow does not write.
* PNG 16-bit: OpenCV encodes the pixels (Pillow has no 16-bit RGB mode) and the
  ``iCCP``, ``eXIf`` and ``iTXt`` chunks are added after the header.
* TIFF, 8 or 16 bits: written here (one deflate-compressed strip), its directory
  serialised by Pillow's TIFF code: the photo's EXIF tags in the first directory,
  the EXIF and GPS sub-directories, XMP (700), IPTC (33723), ICC (34675).
* BMP holds none of these.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, TiffImagePlugin
from PIL.PngImagePlugin import PngInfo

from diffbir.imaging.metadata import TIFF_LAYOUT_TAGS

__all__ = ["Embedded", "encode", "JPEG_444_QUALITY"]

#: JPEG quality from which the chroma is kept at full resolution (4:4:4).
JPEG_444_QUALITY = 90

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_LONG = 4  # the TIFF type of a sub-directory's offset
_XMP_KEY = "XML:com.adobe.xmp"


@dataclass(frozen=True)
class Embedded:
    """What goes into a file beside the pixels (``None``: nothing of that kind)."""

    icc: bytes | None = None
    exif: Image.Exif | None = None
    xmp: bytes | None = None
    iptc: bytes | None = None
    text: dict[str, str] | None = None  # PNG text chunks (our run settings)


class EncodeError(ValueError):
    """The encoder refused the pixels (raised to the writer, which names the file)."""


def encode(
    fileobj: IO[bytes],
    pixels: np.ndarray,
    pillow_format: str,
    suffix: str,
    quality: int,
    embedded: Embedded = Embedded(),
) -> None:
    """Encode ``[H, W, 3|4]`` uint8/uint16 ``pixels`` with ``embedded`` into ``fileobj``."""
    if pillow_format == "TIFF":
        fileobj.write(_tiff(pixels, embedded))
        return
    if pixels.dtype == np.uint16:
        fileobj.write(_png16(pixels, suffix, embedded))
        return
    image = Image.fromarray(pixels, mode="RGBA" if pixels.shape[2] == 4 else "RGB")
    options: dict[str, object] = {}
    if pillow_format != "BMP":
        if embedded.icc:
            options["icc_profile"] = embedded.icc
        if embedded.exif is not None:
            options["exif"] = embedded.exif
    if pillow_format == "JPEG":
        # Full-resolution chroma at high quality: restored detail is the point.
        subsampling = 0 if quality >= JPEG_444_QUALITY else 2
        options.update(quality=quality, subsampling=subsampling)
    elif pillow_format == "WEBP":
        options.update(quality=quality, lossless=quality >= 100)
    elif pillow_format == "AVIF":
        options.update(quality=quality)
    if embedded.xmp and pillow_format in ("JPEG", "WEBP", "AVIF"):
        options["xmp"] = embedded.xmp
    if pillow_format == "PNG" and (embedded.text or embedded.xmp):
        info = PngInfo()
        if embedded.xmp:
            info.add_itxt(_XMP_KEY, embedded.xmp.decode("utf-8", "replace"))
        for key, value in (embedded.text or {}).items():
            info.add_itxt(key, value)
        options["pnginfo"] = info
    if pillow_format == "JPEG" and embedded.iptc:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", **options)
        fileobj.write(_with_app13(buffer.getvalue(), embedded.iptc))
        return
    image.save(fileobj, format=pillow_format, **options)


# ---------------------------------------------------------------- JPEG: IPTC


def _with_app13(jpeg: bytes, iptc: bytes) -> bytes:
    """``jpeg`` with a Photoshop APP13 block holding ``iptc``, after its APPn segments."""
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\0\0" + struct.pack(">I", len(iptc))
    resource += iptc + (b"\0" if len(iptc) % 2 else b"")
    payload = b"Photoshop 3.0\0" + resource
    if len(payload) > 65533:
        return jpeg  # one segment only; a larger block is left out
    segment = b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and 0xE0 <= jpeg[pos + 1] <= 0xEF:
        pos += 2 + struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
    return jpeg[:pos] + segment + jpeg[pos:]


# ---------------------------------------------------------------- PNG 16-bit


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _itxt(key: str, text: str) -> bytes:
    return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8"))


def _png16(pixels: np.ndarray, suffix: str, embedded: Embedded) -> bytes:
    import cv2  # Pillow cannot write 16-bit colour

    order = [2, 1, 0, 3] if pixels.shape[2] == 4 else [2, 1, 0]
    ok, buffer = cv2.imencode(suffix, np.ascontiguousarray(pixels[:, :, order]))
    if not ok:
        raise EncodeError(f"OpenCV could not encode a 16-bit {suffix} image")
    png = buffer.tobytes()
    chunks = b""
    if embedded.icc:
        chunks += _chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(embedded.icc))
    if embedded.exif is not None:
        exif = embedded.exif.tobytes()
        chunks += _chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif)
    if embedded.xmp:
        chunks += _itxt(_XMP_KEY, embedded.xmp.decode("utf-8", "replace"))
    for key, value in (embedded.text or {}).items():
        chunks += _itxt(key, value)
    header_end = 8 + 8 + 13 + 4  # signature, then the IHDR chunk
    return png[:header_end] + chunks + png[header_end:]


# ---------------------------------------------------------------- TIFF


def _tiff(pixels: np.ndarray, embedded: Embedded) -> bytes:
    """A little-endian TIFF: header, directory (with its values), one deflate strip."""
    height, width, channels = pixels.shape
    bits = 16 if pixels.dtype == np.uint16 else 8
    strip = zlib.compress(pixels.astype("<u2" if bits == 16 else np.uint8).tobytes(), 6)
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    exif = embedded.exif
    if exif is not None:
        for tag, value in exif.items():
            if tag not in TIFF_LAYOUT_TAGS and tag not in (_EXIF_IFD, _GPS_IFD):
                ifd[tag] = value
        for tag in (_EXIF_IFD, _GPS_IFD):
            sub = dict(exif.get_ifd(tag))
            if sub:
                ifd[tag] = sub
                ifd.tagtype[tag] = _LONG
    layout = {
        256: width,
        257: height,
        258: (bits,) * channels,
        259: 8,  # Adobe deflate
        262: 2,  # RGB
        273: 0,  # Pillow adds the directory's end: the strip follows it
        277: channels,
        278: height,
        279: len(strip),
        284: 1,
    }
    for tag, value in layout.items():
        ifd[tag] = value
    if channels == 4:
        ifd[338] = 2  # unassociated alpha
    for tag, value, kind in (
        (700, embedded.xmp, 1),
        (33723, embedded.iptc, 7),
        (34675, embedded.icc, 7),
    ):
        if value:
            ifd[tag] = value
            ifd.tagtype[tag] = kind
    body = ifd.tobytes(8)
    return b"II*\0" + struct.pack("<I", 8) + body + strip
