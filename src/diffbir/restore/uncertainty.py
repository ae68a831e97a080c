"""Where the model invented: a per-pixel map of how much a restoration depends on chance.

``diffbir restore --uncertainty`` (and the web UI's toggle) writes one map per input,
at the output's size and orientation, in 8-bit levels (0..255 of the restored sRGB
values, before any conversion to an output profile). Two measures, picked by the number of samples:

* **spread** (``--n-samples N``, N >= 2): the restorations of one input with N
  different noise draws differ where the model chose freely. Per pixel,

      spread = 255 * sqrt( mean over R,G,B of var_k(sample_k) )

  with the unbiased variance over the N samples (``ddof = 1``), so that two samples
  give ``|a - b| / sqrt(2)`` and the value estimates the seed-to-seed standard
  deviation whatever N is. Colour-only differences count (a luma measure would miss
  a shirt restored red in one draw and blue in the other).

* **detail** (one sample): how far the output's detail departs from the stage-1
  image (the cleaner's output, the diffusion's condition). Both are split as the
  wavelet colour fix splits them (:func:`lowpass`: 5 a-trous levels as
  :func:`~diffbir.imaging.color.wavelet_lowpass`, structures of up to about 32 pixels
  count as detail, edges extended by point reflection); the
  difference of the high parts ``d = (out - low(out)) - (s1 - low(s1))`` is taken
  as a local RMS over RGB,

      detail = 255 * sqrt( mean over R,G,B of low2(d ** 2) )

  with ``low2`` two a-trous levels (about a 7-pixel window), so the map shows the
  energy of what was added, removed or moved, not the sign of each ripple. Low
  frequencies (a global colour shift, a smooth gradient) cancel: they are what the
  colour fix takes from stage 1 anyway. The output's 8-bit rounding leaves a floor
  of about 0.3 levels.

Neither is a correctness guarantee: a low spread means the draws agree, not that
they agree with the real scene; see README "Where the model invented".

The files: ``NAME.uncertainty.png``, a colour heat map on the fixed scale
0..:data:`SCALE_LEVELS` levels (black, purple, red, orange, pale yellow; above the
scale stays pale yellow) so that maps of different photos compare, and
``NAME.uncertainty-raw.png``, the values as 16-bit grey, ``levels = value /``
:data:`RAW_PER_LEVEL` (0..255.99 levels in 1/256 steps). Both record the measure,
the formula, the scale and summary statistics in PNG text chunks.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffbir.errors import ConfigError, printable

#: The heat map's full scale, in 8-bit levels: fixed, so maps of different photos compare.
SCALE_LEVELS = 32.0
#: Raw map values per level (16-bit grey PNG): ``levels = value / RAW_PER_LEVEL``.
RAW_PER_LEVEL = 256
#: A-trous levels of the detail split (those of the wavelet colour fix).
DETAIL_LEVELS = 5
#: A-trous levels of the local energy window of the detail measure.
ENERGY_LEVELS = 2
#: The heat map's colours at 0, 1/4, 1/2, 3/4 and 1 of the scale (luminance rises).
HEAT_ANCHORS = (
    (0.00, 0.00, 0.00),
    (0.33, 0.05, 0.50),
    (0.80, 0.15, 0.30),
    (0.98, 0.55, 0.05),
    (1.00, 1.00, 0.85),
)
#: What the files say of each measure.
FORMULAS = {
    "spread": "255*sqrt(mean_RGB(var_samples(x), ddof=1))",
    "detail": (
        "255*sqrt(mean_RGB(lowpass2((out-lowpass5(out))-(stage1-lowpass5(stage1)))^2))), "
        "a-trous wavelet lowpass"
    ),
}
HEAT_SUFFIX = ".uncertainty.png"
RAW_SUFFIX = ".uncertainty-raw.png"


@dataclass(frozen=True)
class UncertaintyMap:
    """One input's map: ``levels`` [H, W] float32 on the CPU, ``kind`` ``"spread"`` or
    ``"detail"``, from ``samples`` restorations."""

    levels: torch.Tensor
    kind: str
    samples: int

    def describe(self) -> str:
        """One line for people: the measure and its mean, 99th percentile and maximum."""
        values = self.levels.flatten()
        what = f"spread of {self.samples} samples" if self.kind == "spread" else "detail vs stage 1"
        return (
            f"{what}: mean {float(values.mean()):.1f}, 99th percentile "
            f"{_quantile(values, 0.99):.1f}, max {float(values.max()):.1f} levels"
        )

    def metadata(self) -> dict[str, str]:
        """What the map's files record of it."""
        values = self.levels.flatten()
        return {
            "uncertainty": self.kind,
            "uncertainty_samples": str(self.samples),
            "uncertainty_formula": FORMULAS[self.kind],
            "uncertainty_units": "8-bit levels of the restored image in sRGB",
            "uncertainty_scale": f"heat map 0..{SCALE_LEVELS:g} levels, black to pale yellow",
            "uncertainty_raw": f"{RAW_SUFFIX}: 16-bit grey, levels = value / {RAW_PER_LEVEL}",
            "uncertainty_mean": f"{float(values.mean()):.3f}",
            "uncertainty_p99": f"{_quantile(values, 0.99):.3f}",
            "uncertainty_max": f"{float(values.max()):.3f}",
        }


def map_paths(out: Path) -> tuple[Path, Path]:
    """``(heat map, raw map)`` beside the output ``out`` (``NAME.png``, or the base
    name ``NAME`` of ``NAME_0``, ``NAME_1``... with several samples): one per input."""
    return out.with_name(out.stem + HEAT_SUFFIX), out.with_name(out.stem + RAW_SUFFIX)


def sample_spread(samples: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` restorations of one input (N >= 2) -> ``[H, W]`` spread in levels."""
    if samples.dim() != 4 or samples.shape[0] < 2 or samples.shape[1] != 3:
        raise ConfigError(f"the spread needs [N>=2, 3, H, W] samples, got {tuple(samples.shape)}")
    x = samples.detach().float().cpu()
    return x.var(dim=0, correction=1).mean(dim=0).sqrt_().mul_(255.0)


def detail_departure(output: torch.Tensor, stage1: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` output and its stage-1 image (any size, resized to the output's) ->
    ``[H, W]`` local RMS of their high-frequency difference, in levels."""
    if output.dim() != 3 or output.shape[0] != 3 or stage1.dim() != 3 or stage1.shape[0] != 3:
        raise ConfigError(
            f"the detail map needs two [3, H, W] images, got {tuple(output.shape)} "
            f"and {tuple(stage1.shape)}"
        )
    out = output.detach().float().cpu()[None]
    ref = stage1.detach().float().cpu()[None].clamp(0.0, 1.0)
    if ref.shape[-2:] != out.shape[-2:]:  # the DiffBIR stage 1 is at the diffusion's size
        ref = torch.nn.functional.interpolate(
            ref, size=tuple(out.shape[-2:]), mode="bicubic", antialias=True
        ).clamp_(0.0, 1.0)
    diff = out - ref
    high = diff - lowpass(diff, DETAIL_LEVELS)  # the split is linear
    energy = lowpass(high.square_(), ENERGY_LEVELS)
    return energy[0].mean(dim=0).clamp_(min=0.0).sqrt_().mul_(255.0)


def lowpass(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The a-trous low-pass of the wavelet colour fix (binomial 3x3 kernels dilated by 1,
    2, 4...), with the edges extended by point reflection (``2 * edge - mirror``) instead
    of repetition: a linear ramp passes unchanged, so a smooth gradient or a colour
    shift leaves no "detail" along the borders either."""
    for i in range(levels):
        x = _blur_axis(_blur_axis(x, 2**i, -1), 2**i, -2)
    return x


def _blur_axis(x: torch.Tensor, d: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    if d >= n:  # too small to mirror: repeat the edge
        first, last = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
        before = first.repeat_interleave(d, dim)
        after = last.repeat_interleave(d, dim)
    else:
        first, last = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
        before = 2 * first - x.narrow(dim, 1, d).flip(dim)
        after = 2 * last - x.narrow(dim, n - 1 - d, d).flip(dim)
    p = torch.cat([before, x, after], dim)
    left, right, centre = p.narrow(dim, 0, n), p.narrow(dim, 2 * d, n), p.narrow(dim, d, n)
    return (left + right + 2 * centre) / 4


def uncertainty_map(samples: torch.Tensor, stage1: torch.Tensor | None) -> UncertaintyMap:
    """The map of one input from its ``[N, 3, H, W]`` restorations: their spread for N >= 2,
    else the first one's detail departure from ``stage1``."""
    if samples.shape[0] >= 2:
        return UncertaintyMap(sample_spread(samples), "spread", int(samples.shape[0]))
    if stage1 is None:
        raise ConfigError("the one-sample uncertainty map needs the stage-1 image")
    return UncertaintyMap(detail_departure(samples[0], stage1), "detail", 1)


def heat_colours(levels: torch.Tensor, scale: float = SCALE_LEVELS) -> torch.Tensor:
    """``[H, W]`` levels -> ``[3, H, W]`` colours in [0, 1] on the fixed scale (piecewise
    linear between :data:`HEAT_ANCHORS`; values above ``scale`` get the top colour)."""
    anchors = torch.tensor(HEAT_ANCHORS, dtype=torch.float32)
    t = (levels.float() / scale).clamp(0.0, 1.0) * (len(HEAT_ANCHORS) - 1)
    low = t.floor().clamp(max=len(HEAT_ANCHORS) - 2).long()
    frac = (t - low.float())[..., None]
    colours = anchors[low] * (1 - frac) + anchors[low + 1] * frac
    return colours.permute(2, 0, 1).contiguous()


def overlay(
    image: torch.Tensor, levels: torch.Tensor, opacity: float = 0.6, scale: float = SCALE_LEVELS
) -> torch.Tensor:
    """``image`` [3, H, W] with the heat map laid over it: each pixel's weight is
    ``opacity * sqrt(min(levels / scale, 1))``, so where the map is 0 the photo shows
    unchanged and high values show their colour (the square root keeps low values
    visible)."""
    if tuple(image.shape[-2:]) != tuple(levels.shape[-2:]):
        raise ConfigError(
            f"the map ({tuple(levels.shape[-2:])}) and the image ({tuple(image.shape[-2:])}) "
            "differ in size"
        )
    if not 0.0 <= opacity <= 1.0:
        raise ConfigError(f"the overlay's opacity must be in [0, 1], got {opacity!r}")
    weight = (levels.float() / scale).clamp(0.0, 1.0).sqrt() * opacity
    base = image.detach().float().cpu().clamp(0.0, 1.0)
    return base * (1 - weight) + heat_colours(levels, scale) * weight


def raw_array(levels: torch.Tensor) -> np.ndarray:
    """``[H, W]`` levels as the raw map's uint16 values (``levels * RAW_PER_LEVEL``)."""
    values = (levels.float() * RAW_PER_LEVEL).round().clamp(0, 65535)
    return values.to(torch.int32).numpy().astype(np.uint16)


def read_raw(path: str | Path) -> torch.Tensor:
    """A raw map file back as ``[H, W]`` levels."""
    from PIL import Image

    with Image.open(path) as image:
        values = np.asarray(image, dtype=np.uint16 if image.mode.startswith("I;16") else None)
    return torch.from_numpy(values.astype(np.float32)) / RAW_PER_LEVEL


def write_maps(
    out: Path, umap: UncertaintyMap, metadata: dict[str, str] | None = None
) -> tuple[Path, Path]:
    """Write ``umap``'s raw map, then its heat map, beside the output ``out``, each
    atomically (a killed run leaves no half file; resuming looks for both).
    ``metadata`` (how the output was made) is recorded with the map's own."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from diffbir.imaging.atomic import ImageWriteError, atomic_write
    from diffbir.imaging.io import write_image

    heat, raw = map_paths(out)
    text = {**(metadata or {}), **umap.metadata()}
    info = PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value)
    grey = Image.fromarray(raw_array(umap.levels))  # uint16: 16-bit grey
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG", pnginfo=info)
    try:
        raw.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(raw, lambda f: f.write(buffer.getvalue()))
    except OSError as err:
        reason = printable(err.strerror or err)
        raise ImageWriteError(f"{printable(raw.name)}: cannot write ({reason})") from None
    write_image(heat, heat_colours(umap.levels), metadata=text)
    return heat, raw


def _quantile(values: torch.Tensor, q: float) -> float:
    """``values``' ``q`` quantile (on a subsample of large maps: torch.quantile's limit)."""
    if values.numel() > 1_000_000:
        values = values[:: values.numel() // 1_000_000 + 1]
    return float(torch.quantile(values.float(), q))
