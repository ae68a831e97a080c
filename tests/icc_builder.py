"""Matrix/TRC ICC profiles (v2.4, display class) built from primaries, for the tests.

ImageCms can create only sRGB, LAB and XYZ profiles, so the wide-gamut profiles the
tests need (Adobe RGB (1998), Display P3, ProPhoto RGB) are written here from their
published primaries, white point and tone curve: the colorants are adapted to the
ICC's D50 connection space with the Bradford transform, as profile makers do.
"""

from __future__ import annotations

import struct

import numpy as np

D50 = np.array([0.9642, 1.0, 0.8249])
D65_XY = (0.3127, 0.3290)
D50_XY = (0.3457, 0.3585)
_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)

#: name -> (primaries xy r, g, b; white xy; curve: a gamma, or ("para3", g, a, b, c, d))
SPACES = {
    "Adobe RGB (1998)": (((0.64, 0.33), (0.21, 0.71), (0.15, 0.06)), D65_XY, 563 / 256),
    "Display P3": (
        ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
        D65_XY,
        ("para3", 2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045),
    ),
    "ProPhoto RGB": (
        ((0.7347, 0.2653), (0.1596, 0.8404), (0.0366, 0.0001)),
        D50_XY,
        ("para3", 1.8, 1.0, 0.0, 1 / 16, 1 / 512),
    ),
}


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


def make_profile(name: str) -> bytes:
    """The ICC profile of one of :data:`SPACES`."""
    primaries, white_xy, curve = SPACES[name]
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
        (b"cprt", b"text\0\0\0\0" + b"made in the tests\0"),
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
    assert len(header) == 128, len(header)
    return header + table + body
