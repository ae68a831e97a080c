"""ICC colour profiles: inputs into sRGB for the models, results back into a profile.

The models were trained on sRGB photos, so every input is converted to sRGB when
read and every output is converted from sRGB into the profile it is written in
(the input's by default, see :func:`output_profile`), with that profile embedded.

* **Engine.** Pillow's ImageCms (littlecms) for 8-bit images, with the relative
  colorimetric intent: in-gamut colours are kept exactly (white to white), colours
  outside sRGB's gamut are clipped to its edge. Matrix/TRC profiles (Adobe RGB,
  Display P3, ProPhoto, sRGB variants; what cameras, phones and scanners embed)
  have no perceptual tables, so littlecms uses the same colorimetric mapping for
  them whatever the intent.
* **16 bits.** ImageCms works on 8-bit images only; 16-bit images with a
  matrix/TRC RGB (or gray TRC) profile are converted here in float32 with the
  profile's own curves and matrix (what littlecms computes for such profiles;
  the tests hold both to within one 8-bit level), so no precision is lost. A
  16-bit image with a LUT-based profile is converted through ImageCms at 8 bits,
  with a note.
* **No profile** means sRGB (as browsers and most viewers assume). A profile that
  cannot be parsed, or whose colour space does not fit the pixels, is ignored
  with a note and the image is taken as sRGB.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms

from diffbir.errors import DiffBIRWarning

__all__ = [
    "OUTPUT_PROFILES",
    "describe",
    "from_srgb_array",
    "from_srgb_image",
    "is_rgb_profile",
    "is_srgb",
    "output_profile",
    "srgb_profile",
    "to_srgb_array",
    "to_srgb_image",
]

#: ``--output-profile`` choices: the input's profile, or sRGB.
OUTPUT_PROFILES = ("input", "srgb")

_INTENT = ImageCms.Intent.RELATIVE_COLORIMETRIC


@lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """littlecms's built-in sRGB profile (588 bytes): what untagged inputs are taken
    as, and what sRGB outputs embed."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _open(icc: bytes) -> ImageCms.ImageCmsProfile | None:
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _colour_space(icc: bytes) -> str:
    """The profile's data colour space from its header: ``'RGB'``, ``'GRAY'``, ``'CMYK'``..."""
    return icc[16:20].decode("latin-1").strip() if len(icc) >= 128 else ""


def describe(icc: bytes | None) -> str:
    """The profile's description ('Adobe RGB (1998)'), 'sRGB' for none."""
    if not icc:
        return "sRGB"
    profile = _open(icc)
    if profile is None:
        return "an unreadable profile"
    return (profile.profile.profile_description or "an unnamed profile").strip()


def is_rgb_profile(icc: bytes | None) -> bool:
    """Whether RGB pixels can be written in ``icc`` (an RGB input, display or colour
    space profile that littlecms opens)."""
    if not icc or _colour_space(icc) != "RGB" or _open(icc) is None:
        return False
    return icc[12:16] in (b"mntr", b"scnr", b"spac")


def is_srgb(icc: bytes | None) -> bool:
    """Whether ``icc`` is sRGB (none, or a matrix/TRC profile with sRGB's colorants and
    curve within 1/500): what the EXIF colour space tag may then say."""
    if not icc:
        return True
    model, srgb = _model(icc), _model(srgb_profile())
    if model is None or model.matrix is None or srgb is None:
        return False
    if np.abs(model.matrix - srgb.matrix).max() > 2e-3:
        return False
    x = np.linspace(0.0, 1.0, 33, dtype=np.float32)
    reference = srgb.curves[0].forward(x)
    return all(np.abs(c.forward(x) - reference).max() <= 2e-3 for c in model.curves)


def output_profile(input_icc: bytes | None, choice: str) -> bytes | None:
    """The profile an output is written in: the input's (``choice`` ``'input'``) when RGB
    pixels can be written in it, else ``None`` (sRGB, embedded as such). A gray or
    CMYK input's result is RGB, so it is written in sRGB."""
    if choice not in OUTPUT_PROFILES:
        raise ValueError(f"output profile must be one of {OUTPUT_PROFILES}, got {choice!r}")
    if choice == "input" and is_rgb_profile(input_icc):
        return input_icc
    return None


def _note(message: str) -> None:
    warnings.warn(message, DiffBIRWarning, stacklevel=3)


# ---------------------------------------------------------------- 8 bits: ImageCms


def to_srgb_image(img: Image.Image, icc: bytes | None, name: str = "image") -> Image.Image:
    """An 8-bit Pillow image (``L``, ``LA``, ``RGB``, ``RGBA``, ``CMYK``, ``P``...) with the
    embedded profile ``icc``, converted to sRGB (``RGB``, or ``RGBA`` when it has
    alpha, which is kept as it is). Without a usable profile the image is returned
    unchanged (taken as sRGB)."""
    if not icc:
        return img
    profile = _open(icc)
    space = _colour_space(icc)
    if profile is None:
        _note(f"{name}: its ICC profile cannot be read; taken as sRGB")
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    base = {"RGBA": "RGB", "LA": "L", "RGBa": "RGB", "La": "L"}.get(img.mode, img.mode)
    if base != img.mode:
        img = img.convert(base)
    fits = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}.get(space)
    if fits != img.mode:
        _note(
            f"{name}: its {space or 'unknown'} ICC profile does not fit its {img.mode} pixels; taken as sRGB"
        )
        return img if alpha is None else _with_alpha(img.convert("RGB"), alpha)
    try:
        out = ImageCms.profileToProfile(
            img, profile, _srgb_open(), renderingIntent=_INTENT, outputMode="RGB"
        )
    except ImageCms.PyCMSError as err:
        _note(f"{name}: its ICC profile cannot be applied ({err}); taken as sRGB")
        out = img.convert("RGB")
    return out if alpha is None else _with_alpha(out, alpha)


def _with_alpha(rgb: Image.Image, alpha: Image.Image) -> Image.Image:
    out = rgb.convert("RGBA")
    out.putalpha(alpha)
    return out


@lru_cache(maxsize=1)
def _srgb_open() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(io.BytesIO(srgb_profile()))


def from_srgb_image(rgb: np.ndarray, icc: bytes | None) -> np.ndarray:
    """``[H, W, 3]`` uint8 sRGB pixels converted into the RGB profile ``icc`` (uint8)."""
    if not icc:
        return rgb
    out = ImageCms.profileToProfile(
        Image.fromarray(rgb, "RGB"),
        _srgb_open(),
        ImageCms.ImageCmsProfile(io.BytesIO(icc)),
        renderingIntent=_INTENT,
        outputMode="RGB",
    )
    return np.asarray(out)


# ---------------------------------------------------------------- float: matrix/TRC


@dataclass(frozen=True, eq=False)  # hashed by identity: its dense table is cached
class _Curve:
    """One tone curve of a profile: device value -> linear, on [0, 1]."""

    gamma: float | None = None  # Y = X ** gamma
    table: np.ndarray | None = None  # sampled curve, uniform in X
    para: tuple[int, tuple[float, ...]] | None = None  # ICC parametric curve

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(x, 0.0, 1.0)
        if self.gamma is not None:
            return np.power(x, self.gamma, dtype=np.float32)
        if self.table is not None:
            grid = np.linspace(0.0, 1.0, len(self.table), dtype=np.float32)
            return np.interp(x, grid, self.table).astype(np.float32)
        kind, p = self.para  # type: ignore[misc]
        return _parametric(kind, p, x.astype(np.float64)).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = np.clip(y, 0.0, 1.0)
        if self.gamma is not None:
            return np.power(y, 1.0 / self.gamma, dtype=np.float32)
        xs, ys = self._dense()
        return np.interp(y, ys, xs).astype(np.float32)

    @lru_cache(maxsize=32)  # noqa: B019 - a few curves per run, each 1 MB
    def _dense(self) -> tuple[np.ndarray, np.ndarray]:
        xs = np.linspace(0.0, 1.0, 65536)
        ys = np.maximum.accumulate(self.forward(xs).astype(np.float64))  # monotone for interp
        return xs, ys


def _parametric(kind: int, p: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """ICC parametricCurveType functions 0..4."""
    g = p[0]
    if kind == 0:
        return np.power(x, g)
    a, b = p[1], p[2]
    if kind in (1, 2):
        c = p[3] if kind == 2 else 0.0
        edge = -b / a if a else 0.0
        return np.where(x >= edge, np.power(np.maximum(a * x + b, 0.0), g) + c, c)
    c, d = p[3], p[4]
    e, f = (p[5], p[6]) if kind == 4 else (0.0, 0.0)
    return np.where(x >= d, np.power(np.maximum(a * x + b, 0.0), g) + e, c * x + f)


@dataclass(frozen=True)
class _MatrixShaper:
    """A profile's device -> PCS (XYZ D50) model: three curves and a matrix (or one
    gray curve, whose result is the luminance Y)."""

    curves: tuple[_Curve, ...]
    matrix: np.ndarray | None  # [3, 3] columns rXYZ gXYZ bXYZ; None for gray


def _s15(data: bytes, offset: int, count: int) -> tuple[float, ...]:
    return tuple(v / 65536.0 for v in struct.unpack_from(f">{count}i", data, offset))


def _read_curve(data: bytes) -> _Curve | None:
    kind = data[:4]
    if kind == b"curv":
        (count,) = struct.unpack_from(">I", data, 8)
        if count == 0:
            return _Curve(gamma=1.0)
        if count == 1:
            return _Curve(gamma=struct.unpack_from(">H", data, 12)[0] / 256.0)
        table = np.frombuffer(data, dtype=">u2", count=count, offset=12) / 65535.0
        return _Curve(table=table.astype(np.float32))
    if kind == b"para":
        (function,) = struct.unpack_from(">H", data, 8)
        count = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}.get(function)
        if count is None:
            return None
        return _Curve(para=(function, _s15(data, 12, count)))
    return None


def _matrix_shaper(icc: bytes) -> _MatrixShaper | None:
    """The matrix/TRC model of ``icc``, or None for a LUT-based or unreadable profile."""
    try:
        if len(icc) < 132 or icc[20:24] != b"XYZ ":
            return None
        (count,) = struct.unpack_from(">I", icc, 128)
        tags = {}
        for i in range(count):
            sig, offset, size = struct.unpack_from(">4sII", icc, 132 + 12 * i)
            tags[sig] = icc[offset : offset + size]
        if any(sig.startswith((b"A2B", b"B2A", b"D2B", b"B2D")) for sig in tags):
            return None  # littlecms would use the LUTs
        space = _colour_space(icc)
        if space == "GRAY" and b"kTRC" in tags:
            curve = _read_curve(tags[b"kTRC"])
            return None if curve is None else _MatrixShaper((curve,), None)
        if space != "RGB":
            return None
        curves = tuple(_read_curve(tags[s]) for s in (b"rTRC", b"gTRC", b"bTRC"))
        if any(c is None for c in curves):
            return None
        columns = [_s15(tags[s], 8, 3) for s in (b"rXYZ", b"gXYZ", b"bXYZ")]
        return _MatrixShaper(curves, np.array(columns, dtype=np.float64).T)  # type: ignore[arg-type]
    except (KeyError, struct.error, ValueError):
        return None


@lru_cache(maxsize=8)
def _model(icc: bytes) -> _MatrixShaper | None:
    return _matrix_shaper(icc)


def _to_linear(model: _MatrixShaper, x: np.ndarray) -> np.ndarray:
    return np.stack([c.forward(x[..., i]) for i, c in enumerate(model.curves)], axis=-1)


def to_srgb_array(colour: np.ndarray, icc: bytes | None, name: str = "image") -> np.ndarray:
    """``[H, W, C]`` float32 in [0, 1] (C = 3 RGB, or 1 gray) with the profile ``icc``,
    converted to sRGB ``[H, W, 3]`` (gray stays ``[H, W, 1]`` when it has no profile).
    Matrix/TRC profiles are applied in float; others through ImageCms at 8 bits."""
    if not icc:
        return colour
    space = _colour_space(icc)
    expected = "GRAY" if colour.shape[-1] == 1 else "RGB"
    if _open(icc) is None or space != expected:
        why = "cannot be read" if _open(icc) is None else f"({space}) does not fit the pixels"
        _note(f"{name}: its ICC profile {why}; taken as sRGB")
        return colour
    model, target = _model(icc), _model(srgb_profile())
    if model is None or target is None:
        _note(f"{name}: 16-bit pixels with a LUT-based ICC profile are converted to sRGB at 8 bits")
        mode = "L" if colour.shape[-1] == 1 else "RGB"
        pixels = (np.clip(colour, 0, 1) * 255 + 0.5).astype(np.uint8)
        image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
        return np.asarray(to_srgb_image(image, icc, name), dtype=np.float32) / 255.0
    linear = _to_linear(model, colour)
    if model.matrix is None:  # gray: Y of D50 white; sRGB's gray of that luminance
        xyz = linear * np.array([0.9642, 1.0, 0.8249], dtype=np.float32)
    else:
        xyz = linear @ model.matrix.T.astype(np.float32)
    srgb_linear = xyz @ np.linalg.inv(target.matrix).T.astype(np.float32)
    out = np.stack([c.inverse(srgb_linear[..., i]) for i, c in enumerate(target.curves)], -1)
    return out.astype(np.float32)


def from_srgb_array(rgb: np.ndarray, icc: bytes | None) -> np.ndarray:
    """``[H, W, 3]`` float32 sRGB in [0, 1] converted into the RGB profile ``icc`` in
    float (matrix/TRC profiles), else through ImageCms at 8 bits."""
    if not icc:
        return rgb
    model, source = _model(icc), _model(srgb_profile())
    if model is None or model.matrix is None or source is None:
        pixels = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
        return from_srgb_image(pixels, icc).astype(np.float32) / 255.0
    xyz = _to_linear(source, rgb) @ source.matrix.T.astype(np.float32)
    linear = xyz @ np.linalg.inv(model.matrix).T.astype(np.float32)
    out = np.stack([c.inverse(linear[..., i]) for i, c in enumerate(model.curves)], -1)
    return out.astype(np.float32)
