"""Matrix/TRC ICC profiles (v2.4, display class) built from primaries and a tone curve.

ImageCms can create only sRGB, LAB and XYZ profiles. Files often name their colour
space without embedding a profile: a camera JPEG's EXIF says "Adobe RGB" by its
DCF interoperability index ``R03``, a HEIC/AVIF gives CICP (nclx) primaries and a
transfer curve. For those, :func:`make_profile` writes the profile from the space's
published primaries, white point and tone curve (the colorants adapted to the ICC's
D50 connection space with the Bradford transform, as profile makers do), so they
are converted and written back like any tagged file. The tests build their
wide-gamut profiles with it too.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from diffbir.errors import DiffBIRWarning, printable
from diffbir.imaging import heif
from diffbir.imaging.metadata import exif_colour_space

D50 = np.array([0.9642, 1.0, 0.8249])
D65_XY = (0.3127, 0.3290)
D50_XY = (0.3457, 0.3585)
_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)

_SRGB_CURVE = ("para3", 2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
_REC709_CURVE = ("para3", 1 / 0.45, 1 / 1.099, 0.099 / 1.099, 1 / 4.5, 0.081)

#: name -> (primaries xy r, g, b; white xy; curve: a gamma, or ("para3", g, a, b, c, d))
SPACES = {
    "Adobe RGB (1998)": (((0.64, 0.33), (0.21, 0.71), (0.15, 0.06)), D65_XY, 563 / 256),
    "Display P3": (((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)), D65_XY, _SRGB_CURVE),
    "ProPhoto RGB": (
        ((0.7347, 0.2653), (0.1596, 0.8404), (0.0366, 0.0001)),
        D50_XY,
        ("para3", 1.8, 1.0, 0.0, 1 / 16, 1 / 512),
    ),
}

#: CICP colour primaries (ITU-T H.273) of the spaces a profile can be made for.
CICP_PRIMARIES = {
    1: ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060)),  # BT.709 / sRGB
    9: ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),  # BT.2020
    12: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),  # Display P3 (SMPTE EG 432-1)
}
#: CICP transfer characteristics that are plain SDR tone curves.
CICP_CURVES = {
    1: _REC709_CURVE,
    4: 2.2,
    6: _REC709_CURVE,
    8: 1.0,
    13: _SRGB_CURVE,
    14: _REC709_CURVE,
    15: _REC709_CURVE,
}
_HDR_CURVES = {16: "PQ", 18: "HLG"}
_CICP_NAMES = {1: "BT.709", 9: "BT.2020", 12: "Display P3"}


def _xyz(xy):
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _xyz_tag(v) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in v)


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(ascii_))
        + ascii_
        + b"\0" * 8  # no unicode description
        + b"\0" * 3  # scriptcode code, count
        + b"\0" * 67
    )


def _curve(spec) -> bytes:
    if isinstance(spec, tuple):
        _, *params = spec
        return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15(p) for p in params)
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, int(round(spec * 256))) + b"\0\0"


def implied_profile(img: Image.Image, path: Path) -> bytes | None:
    """The profile a file without an embedded one names by other means: Adobe RGB by its
    EXIF colour space (camera JPEGs, DCF ``R03``), or a CICP (nclx) colour description
    of a HEIF/AVIF other than sRGB; None means sRGB (or nothing said)."""
    named = exif_colour_space(img)
    if named is not None:
        return make_profile(named)
    described = heif.cicp(img, path)
    if described is None:
        return None
    if described[1] in _HDR_CURVES:
        warnings.warn(
            f"{printable(path.name)}: an HDR image ({_HDR_CURVES[described[1]]}); "
            "its colours are read as SDR sRGB, without tone mapping",
            DiffBIRWarning,
            stacklevel=2,
        )
        return None
    return cicp_profile(*described)


def make_profile(name: str) -> bytes:
    """The ICC profile of one of :data:`SPACES`."""
    primaries, white_xy, curve = SPACES[name]
    return build_profile(name, primaries, white_xy, curve)


def cicp_profile(primaries: int, transfer: int) -> bytes | None:
    """The profile of a CICP (nclx) colour description, or ``None`` when it is sRGB
    itself (nothing to convert) or not a space a matrix/TRC profile describes (HDR
    curves such as PQ and HLG)."""
    if primaries not in CICP_PRIMARIES or transfer not in CICP_CURVES:
        return None
    if primaries == 1 and transfer == 13:
        return None
    name = f"{_CICP_NAMES[primaries]} (CICP {primaries}/{transfer})"
    return build_profile(name, CICP_PRIMARIES[primaries], D65_XY, CICP_CURVES[transfer])


def build_profile(name: str, primaries, white_xy, curve) -> bytes:
    """A v2.4 display profile named ``name`` from primaries and white (CIE xy) and a tone
    curve (a gamma, or ``("para3", g, a, b, c, d)``: ICC parametric curve type 3)."""
    white = _xyz(white_xy)
    # RGB -> XYZ under the space's own white, then Bradford to D50.
    p = np.stack([_xyz(xy) for xy in primaries], axis=1)
    scale = np.linalg.solve(p, white)
    m = p * scale
    cone_src, cone_dst = _BRADFORD @ white, _BRADFORD @ D50
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(cone_dst / cone_src) @ _BRADFORD
    m50 = adapt @ m
    tags = [
        (b"desc", _desc(name)),
        (b"cprt", b"text\0\0\0\0" + b"No copyright, use freely\0"),
        (b"wtpt", _xyz_tag(D50)),
        (b"rXYZ", _xyz_tag(m50[:, 0])),
        (b"gXYZ", _xyz_tag(m50[:, 1])),
        (b"bXYZ", _xyz_tag(m50[:, 2])),
    ]
    trc = _curve(curve)
    tags += [(b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc)]
    table = struct.pack(">I", len(tags))
    body = b""
    offset = 128 + 4 + 12 * len(tags)
    for sig, data in tags:
        while len(data) % 4:
            data += b"\0"
        table += struct.pack(">4sII", sig, offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"none"
        + bytes([2, 0x40, 0, 0])  # version 2.4
        + b"mntrRGB XYZ "
        + b"\0" * 12  # date
        + b"acsp"
        + b"\0" * 24  # platform, flags, manufacturer, model, attributes
        + struct.pack(">I", 0)  # intent
        + b"".join(_s15(c) for c in D50)
        + b"\0" * 48
    )
    return header + table + body
