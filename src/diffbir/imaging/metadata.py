"""A photo's own metadata (EXIF, XMP, IPTC): read from the input, carried to the output.

What is carried, and how it changes on the way:

* **EXIF** (date taken, camera, lens, exposure, author, copyright...): copied. The
  orientation tag becomes 1, because the pixels are written upright; the size tags
  (``ImageWidth``/``ImageLength``, ``PixelXDimension``/``PixelYDimension``) say the
  output's size. The embedded thumbnail (IFD1, the unrestored picture) is not
  copied. GPS position is dropped unless asked for (:meth:`SourceMetadata.without_gps`).
* **XMP** (descriptions, keywords, ratings, rights): copied, with ``tiff:Orientation``
  set to 1 and, without GPS, every ``exif:GPS...`` property removed.
* **IPTC-IIM** (captions, keywords, credit of archives and agencies): copied where the
  output format has a place for it: JPEG (a Photoshop APP13 block) and TIFF (tag
  33723). PNG, WebP and AVIF have none; it is dropped there.

The EXIF colour space (``ColorSpace``, and the DCF interoperability index ``R98``
for sRGB, ``R03`` for Adobe RGB) is made to say what the output is written in: sRGB,
or "uncalibrated" (the ICC profile embedded says which). :func:`exif_colour_space`
reads it from inputs that name Adobe RGB this way without embedding a profile, as
many cameras' JPEGs do.

TIFF inputs keep their EXIF in the image's own first directory, among the tags that
describe the pixels; those (size, samples, compression, strips...) are left out, since
the output describes its own pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from PIL import Image

__all__ = [
    "SourceMetadata",
    "exif_colour_space",
    "exif_for_output",
    "read_metadata",
    "xmp_for_output",
]

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_IMAGE_WIDTH, _IMAGE_LENGTH = 0x0100, 0x0101
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003
_COLOR_SPACE, _INTEROP_IFD, _INTEROP_INDEX = 0xA001, 0xA005, 0x0001
_SRGB, _UNCALIBRATED, _ADOBE_RGB_NONSTANDARD = 1, 0xFFFF, 2
_XMP_TAG, _IPTC_TAG, _ICC_TAG = 700, 33723, 34675

#: TIFF tags that describe a file's pixels and layout, not the photo.
TIFF_LAYOUT_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284}
    | {292, 293, 317, 320, 322, 323, 324, 325, 338, 339, 340, 341, 347, 513, 514}
    | {530, 531, 532, 330, 32781, 32932, 32953, 32954, 32955, 32956, 32995, 32996}
    | {32997, 32998, 33550, 33922, 34264, 34732, 37439, 50838, 50839}
    | {_XMP_TAG, _IPTC_TAG, _ICC_TAG, 34377, 37724}  # XMP/IPTC/ICC apart; Photoshop's blobs
)


@dataclass(frozen=True)
class SourceMetadata:
    """The metadata blocks of an input, as stored (``None``: the file has none).

    ``exif`` is the TIFF-structured EXIF block (``b"Exif\\0\\0"`` first, as Pillow writes
    it); ``xmp`` the XMP packet; ``iptc`` the IPTC-IIM records.
    """

    exif: bytes | None = None
    xmp: bytes | None = None
    iptc: bytes | None = None

    @property
    def empty(self) -> bool:
        return not (self.exif or self.xmp or self.iptc)

    def without_gps(self) -> SourceMetadata:
        """The same metadata with the GPS position removed (EXIF's GPS IFD, XMP's
        ``exif:GPS...`` properties)."""
        exif = self.exif
        if exif:
            data = _load_exif(exif)
            if data is not None and _GPS_IFD in data:
                del data[_GPS_IFD]
                exif = data.tobytes()
        xmp = _drop_xmp_gps(self.xmp) if self.xmp else self.xmp
        return replace(self, exif=exif, xmp=xmp)


def _load_exif(exif: bytes) -> Image.Exif | None:
    data = Image.Exif()
    try:
        data.load(exif)
        data.get_ifd(_EXIF_IFD)  # read the sub-directories now, so tobytes keeps them
        data.get_ifd(_GPS_IFD)
    except Exception:  # noqa: BLE001 - a broken EXIF block is left out, not fatal
        return None
    return data


def read_metadata(img: Image.Image) -> SourceMetadata:
    """EXIF, XMP and IPTC of an opened (not yet transposed) Pillow image."""
    return SourceMetadata(exif=_read_exif(img), xmp=_read_xmp(img), iptc=_read_iptc(img))


def _read_exif(img: Image.Image) -> bytes | None:
    try:
        exif = img.getexif()
        if img.format == "TIFF":
            for tag in list(exif):
                if tag in TIFF_LAYOUT_TAGS:
                    del exif[tag]
        exif.get_ifd(_EXIF_IFD)
        exif.get_ifd(_GPS_IFD)
        if not len(exif) and not exif.get_ifd(_EXIF_IFD):
            return None
        return exif.tobytes()
    except Exception:  # noqa: BLE001 - unreadable EXIF: the photo is still restored
        return None


def _read_xmp(img: Image.Image) -> bytes | None:
    value = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if value is None and img.format == "TIFF":
        value = getattr(img, "tag_v2", {}).get(_XMP_TAG)
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, tuple):
        value = bytes(value)
    return bytes(value) if value else None


def _read_iptc(img: Image.Image) -> bytes | None:
    value = None
    if img.format == "JPEG":
        value = (img.info.get("photoshop") or {}).get(0x0404)
    elif img.format == "TIFF":
        value = getattr(img, "tag_v2", {}).get(_IPTC_TAG)
        if isinstance(value, tuple):  # stored as LONGs by some writers
            value = b"".join(
                v.to_bytes(4, "big") if isinstance(v, int) else bytes(v) for v in value
            )
    return bytes(value) if value else None


def exif_colour_space(img: Image.Image) -> str | None:
    """``'Adobe RGB (1998)'`` when the EXIF names that space without an ICC profile: the
    DCF rule (``ColorSpace`` "uncalibrated" with interoperability index ``R03``), or the
    ``ColorSpace`` value 2 some cameras write; else None (sRGB or not said)."""
    try:
        exif = img.getexif()
        colour_space = exif.get_ifd(_EXIF_IFD).get(_COLOR_SPACE)
        if colour_space == _ADOBE_RGB_NONSTANDARD:
            return "Adobe RGB (1998)"
        if colour_space != _UNCALIBRATED:
            return None
        index = exif.get_ifd(_INTEROP_IFD).get(_INTEROP_INDEX)
    except Exception:  # noqa: BLE001 - an unreadable EXIF says nothing about colour
        return None
    if isinstance(index, bytes):
        index = index.decode("latin-1")
    return "Adobe RGB (1998)" if isinstance(index, str) and index.strip("\0 ") == "R03" else None


def exif_for_output(
    exif: bytes | None, width: int, height: int, *, srgb: bool = True
) -> Image.Exif | None:
    """The input's EXIF for an upright output of ``width`` x ``height``: orientation 1,
    size tags updated, no thumbnail, and the colour space tags saying sRGB (``srgb``)
    or "uncalibrated" (another profile, embedded). None when there is none (or it is
    unreadable)."""
    if not exif:
        return None
    data = _load_exif(exif)
    if data is None:
        return None
    _set_colour_space(data, srgb)
    if _ORIENTATION in data:
        data[_ORIENTATION] = 1
    for tag, value in ((_IMAGE_WIDTH, width), (_IMAGE_LENGTH, height)):
        if tag in data:
            data[tag] = value
    sub = data.get_ifd(_EXIF_IFD)
    if sub:
        sub[_PIXEL_X], sub[_PIXEL_Y] = width, height
    return data


def _set_colour_space(data: Image.Exif, srgb: bool) -> None:
    sub = data.get_ifd(_EXIF_IFD)
    if _COLOR_SPACE in sub:
        sub[_COLOR_SPACE] = _SRGB if srgb else _UNCALIBRATED
    if _INTEROP_IFD not in sub:
        return
    interop = data.get_ifd(_INTEROP_IFD)
    index = interop.get(_INTEROP_INDEX)
    if isinstance(index, bytes):
        index = index.decode("latin-1")
    if isinstance(index, str) and index.strip("\0 ") in ("R98", "R03"):
        if srgb:
            interop[_INTEROP_INDEX] = "R98"
        elif index.strip("\0 ") == "R98":
            del interop[_INTEROP_INDEX]  # no longer sRGB: the embedded profile says what


_XMP_ORIENTATION = re.compile(
    rb"(tiff:Orientation\s*=\s*[\"'])\d+([\"'])|(<tiff:Orientation>)\s*\d+\s*(</tiff:Orientation>)"
)
_XMP_GPS_ATTRIBUTE = re.compile(rb"\s(?:exif|exifEX):GPS\w+\s*=\s*(\"[^\"]*\"|'[^']*')")
_XMP_GPS_ELEMENT = re.compile(
    rb"<((?:exif|exifEX):GPS\w+)[\s>].*?</\1>|<(?:exif|exifEX):GPS\w+[^>]*/>", re.S
)


def xmp_for_output(xmp: bytes | None) -> bytes | None:
    """The input's XMP with its orientation (``tiff:Orientation``) set to 1."""
    if not xmp:
        return None

    def upright(match: re.Match) -> bytes:
        if match.group(1) is not None:
            return match.group(1) + b"1" + match.group(2)
        return match.group(3) + b"1" + match.group(4)

    return _XMP_ORIENTATION.sub(upright, xmp)


def _drop_xmp_gps(xmp: bytes) -> bytes:
    return _XMP_GPS_ELEMENT.sub(b"", _XMP_GPS_ATTRIBUTE.sub(b"", xmp))
