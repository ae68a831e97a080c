"""HEIC/HEIF (phones' default format) and AVIF inputs.

HEIC/HEIF files are decoded by ``pillow-heif`` (the optional extra
``diffbir[heif]``), called directly rather than registered as a Pillow plugin, so
nothing global changes. libheif applies the file's rotation and mirroring
(``irot``/``imir``) when it decodes, and pillow-heif then sets the EXIF orientation
to 1, so the image comes upright and is not turned twice. AVIF is read by Pillow's
own plugin where the installed Pillow has one, else by pillow-heif.

HEIC from phones and cameras is often 10-bit (HDR captures, "HEIF 10-bit" modes):
such files keep their precision, like 16-bit PNG/TIFF, as samples divided by
``2**bits - 1``; their outputs default to 16 bits (``--bit-depth auto``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, features

from diffbir.errors import ImageReadError, printable

__all__ = [
    "HEIF_EXTRA",
    "cicp",
    "container_kind",
    "heif_size",
    "needs_heif_plugin",
    "open_heif",
]

#: What to install for HEIC/HEIF (and AVIF where Pillow lacks it).
HEIF_EXTRA = "pip install 'diffbir[heif]'"

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_HEIF_BRANDS |= {b"mif1", b"msf1", b"heif", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}


def container_kind(path: Path) -> str | None:
    """``'heif'`` or ``'avif'`` from the file's ``ftyp`` box, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if len(head) < 16 or head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[:4], "big")
    brands = [head[8:12]] + [head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
    if brands[0] in _AVIF_BRANDS or (
        brands[0] not in _HEIF_BRANDS - {b"mif1", b"msf1"}
        and any(b in _AVIF_BRANDS for b in brands)
    ):
        return "avif"
    if any(b in _HEIF_BRANDS for b in brands):
        return "heif"
    return None


def needs_heif_plugin(path: Path) -> bool:
    """Whether ``path`` is a HEIF/AVIF file that Pillow alone cannot open here."""
    kind = container_kind(path)
    return kind == "heif" or (kind == "avif" and not features.check("avif"))


def _plugin(path: Path):
    try:
        import pillow_heif  # optional: only HEIC/HEIF (or AVIF without Pillow's plugin)
    except ImportError:
        kind = "an AVIF" if container_kind(path) == "avif" else "a HEIC/HEIF"
        raise ImageReadError(
            f"{printable(path.name)}: {kind} image; reading it needs pillow-heif: {HEIF_EXTRA}"
        ) from None
    return pillow_heif


def open_heif(path: Path) -> tuple[Image.Image, np.ndarray | None]:
    """The decoded, upright primary image of a HEIF/AVIF file.

    Returns a Pillow image with the file's ICC profile, EXIF (orientation reset to 1)
    and XMP in ``info``, and, for files of more than 8 bits per sample, those samples
    as float32 ``[H, W, C]`` in [0, 1] (RGB or RGBA; the Pillow image then holds their
    top 8 bits, for its metadata and header checks); ``None`` for 8-bit files.
    """
    plugin = _plugin(path)
    heif = plugin.open_heif(path, convert_hdr_to_8bit=False)
    bits = int(heif.info.get("bit_depth", 8) or 8)
    if bits <= 8:
        image = heif.to_pillow()
        image.format = "HEIF"
        return image, None
    width, height = heif.size
    # pillow-heif hands more-than-8-bit samples over shifted into the top of 16 bits.
    samples = np.asarray(heif)[:height, :width]
    if samples.ndim == 2:  # monochrome
        samples = samples[:, :, None]
    wide = (samples >> (16 - bits)).astype(np.float32) / float((1 << bits) - 1)
    top = (samples >> 8).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(top[:, :, 0] if top.shape[2] == 1 else top))
    image.info = dict(heif.info)
    plugin.set_orientation(image.info)  # libheif turned the pixels upright already
    image.format = "HEIF"
    return image, wide


def heif_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of the upright primary image, from the header."""
    heif = _plugin(path).open_heif(path, convert_hdr_to_8bit=True)
    return heif.size


#: How far into a HEIF/AVIF file its ``colr`` box is looked for (the ``meta`` box,
#: which holds it, comes before the image data in the files phones and encoders write).
_HEADER_BYTES = 1 << 18


def cicp(img: Image.Image, path: Path) -> tuple[int, int] | None:
    """The CICP (nclx) colour primaries and transfer curve a HEIF/AVIF file declares
    instead of an ICC profile, or None: from pillow-heif's ``nclx_profile``, else (an
    AVIF read by Pillow, which does not report it) from the file's ``colr`` box."""
    nclx = img.info.get("nclx_profile")
    if isinstance(nclx, dict):
        try:
            return int(nclx["color_primaries"]), int(nclx["transfer_characteristics"])
        except (KeyError, TypeError, ValueError):
            return None
    if container_kind(path) is None:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
    except OSError:
        return None
    at = head.find(b"colrnclx")
    if at < 4 or at + 14 > len(head):
        return None
    primaries = int.from_bytes(head[at + 8 : at + 10], "big")
    transfer = int.from_bytes(head[at + 10 : at + 12], "big")
    return primaries, transfer
