"""Degradation pipeline configurations: parse and validate YAML/TOML into frozen dataclasses.

A configuration is a mapping::

    name: my_pipeline            # optional
    sharpen_hq: false            # or true, or {weight: 0.5, threshold: 10, radius: 50}
    quantize: false              # round the LQ to 8-bit levels at the end
    resize_back: bicubic         # mode of the final resize to the HQ size
    stages:                      # applied in order; each item is {stage_type: {fields}}
      - blur: {kernel_size: 41, kernel_list: [iso, aniso], kernel_prob: [0.5, 0.5],
               sigma_x: [0.1, 12]}
      - resize: {downsample: [1, 12], modes: [bilinear]}
      - noise: {gaussian_sigma: [0, 15]}
      - jpeg: {quality: [30, 100]}

Stage types: ``blur``, ``sinc``, ``resize``, ``noise``, ``jpeg`` and ``random_order`` (a
list of stage lists applied in a random order). Every stage takes ``probability``. Ranges
are ``[low, high]``; angles may be written with ``pi`` (``pi``, ``-pi``, ``pi/3``,
``2*pi/3``). Every mistake raises :class:`~diffbir.errors.ConfigError` naming the field.

Limits, checked when the configuration is read, so that a typo cannot exhaust memory
later: every number is finite (no ``.nan``/``.inf``); kernel sizes, ``pad_to`` and the
sharpening ``radius`` are at most 201; blur sigmas lie in [0.001, 1000] and Gaussian
noise sigmas in [0, 255]; a ``random_order`` stage has 2 to 6 groups; and, in the worst
case over every range and every order, resize stages never make an image larger than 8
times the HQ size per side. When parameters are drawn for an image, a resize to more
than 64 megapixels (or than the HQ image, when that is larger) is refused too.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffbir.degradation.kernels import KERNEL_TYPES
from diffbir.degradation.ops import RESIZE_MODES
from diffbir.errors import ConfigError, printable

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

Range = tuple[float, float]

#: Largest kernel size (blur, sinc, ``pad_to``) and unsharp-mask radius: a kernel of size K
#: costs K^2 per pixel (or an FFT padded by K); the presets use at most 41.
MAX_KERNEL_SIZE = 201
#: Blur sigmas outside this range overflow the covariance (kernels of NaN).
SIGMA_LIMITS = (1e-3, 1e3)
#: Gaussian noise sigma is on the 0..255 scale: 255 already drowns the image.
MAX_NOISE_SIGMA = 255.0
#: Worst-case enlargement, per side, of any intermediate image relative to the HQ size.
MAX_ENLARGEMENT = 8.0
#: A random_order stage shuffles at most this many groups (720 orders).
MAX_RANDOM_ORDER_GROUPS = 6


@dataclass(frozen=True)
class BlurStage:
    """Blur with a random mixed kernel (or, with ``sinc_prob``, a sinc kernel)."""

    kernel_sizes: tuple[int, ...]
    pad_to: int
    kernel_list: tuple[str, ...]
    kernel_prob: tuple[float, ...]
    sigma_x: Range
    sigma_y: Range
    rotation: Range = (-math.pi, math.pi)
    betag: Range = (0.5, 4.0)
    betap: Range = (1.0, 2.0)
    sinc_prob: float = 0.0
    # (minimum kernel size, cutoff range) pairs, ascending: the last that fits applies.
    sinc_cutoff: tuple[tuple[int, Range], ...] = ((1, (math.pi / 3, math.pi)),)
    probability: float = 1.0


@dataclass(frozen=True)
class SincStage:
    """Filter with a circular low-pass kernel of random size and cutoff."""

    kernel_sizes: tuple[int, ...]
    pad_to: int
    cutoff: Range
    probability: float = 1.0


@dataclass(frozen=True)
class ResizeStage:
    """Resize relative to the current size or to the HQ size divided by ``divisor``.

    The scale is drawn either as ``1 / downsample`` (``downsample`` set) or by choosing up,
    down or keep with ``updown_prob`` and a factor in ``up_range`` / ``down_range``; with
    neither, the stage resizes to the base size exactly.
    """

    base: str = "current"
    divisor: float = 1.0
    downsample: Range | None = None
    updown_prob: tuple[float, float, float] | None = None
    up_range: Range = (1.0, 1.0)
    down_range: Range = (1.0, 1.0)
    modes: tuple[str, ...] = ("bilinear",)
    probability: float = 1.0


@dataclass(frozen=True)
class NoiseStage:
    """Gaussian noise (sigma on the 0..255 scale) with ``gaussian_prob``, else Poisson."""

    gaussian_sigma: Range = (0.0, 0.0)
    poisson_scale: Range = (0.0, 0.0)
    gaussian_prob: float = 1.0
    gray_prob: float = 0.0
    probability: float = 1.0


@dataclass(frozen=True)
class JpegStage:
    """JPEG round trip at an integer quality drawn uniformly in ``quality`` (inclusive)."""

    quality: tuple[int, int]
    probability: float = 1.0


@dataclass(frozen=True)
class RandomOrderStage:
    """Groups of stages applied in a uniformly random order (e.g. [resize+sinc] vs [JPEG])."""

    groups: tuple[tuple[Stage, ...], ...]


Stage = BlurStage | SincStage | ResizeStage | NoiseStage | JpegStage | RandomOrderStage


@dataclass(frozen=True)
class UsmSettings:
    """Unsharp-mask settings for sharpening the HQ target."""

    weight: float = 0.5
    threshold: float = 10.0
    radius: int = 50


@dataclass(frozen=True)
class PipelineConfig:
    """A validated degradation pipeline."""

    stages: tuple[Stage, ...]
    name: str = "custom"
    description: str = ""
    sharpen_hq: UsmSettings | None = None
    quantize: bool = False
    resize_back: str = "bicubic"


# --------------------------------------------------------------------------- parsing


_PI_EXPR = re.compile(r"^\s*(-)?\s*(\d+(?:\.\d*)?)?\s*\*?\s*pi\s*(?:/\s*(\d+(?:\.\d*)?))?\s*$")


def _number(value: Any, where: str) -> float:
    number = _parse_number(value)
    if number is None:
        raise ConfigError(
            f"{where}: expected a number (or an expression like pi/3), got {_shown(value)}"
        )
    if not math.isfinite(number):
        raise ConfigError(f"{where}: must be a finite number, got {_shown(value)}")
    return number


def _parse_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range
            return math.inf
    if isinstance(value, str):
        m = _PI_EXPR.match(value.lower())
        if m:
            sign = -1.0 if m.group(1) else 1.0
            mult = float(m.group(2)) if m.group(2) else 1.0
            div = float(m.group(3)) if m.group(3) else 1.0
            return sign * mult * math.pi / div if div else math.inf
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _shown(value: Any, limit: int = 60) -> str:
    """``repr`` of a user value, shortened, on one line (for messages)."""
    text = printable(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _range(value: Any, where: str, *, low: float | None = None, high: float | None = None) -> Range:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{where}: expected a range [low, high], got {_shown(value)}")
    lo, hi = _number(value[0], where), _number(value[1], where)
    if lo > hi:
        raise ConfigError(f"{where}: low must not exceed high, got [{lo:g}, {hi:g}]")
    if low is not None and lo < low:
        raise ConfigError(f"{where}: values must be >= {low:g}, got [{lo:g}, {hi:g}]")
    if high is not None and hi > high:
        raise ConfigError(f"{where}: values must be <= {high:g}, got [{lo:g}, {hi:g}]")
    return (lo, hi)


def _prob(value: Any, where: str) -> float:
    p = _number(value, where)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{where}: a probability must be in [0, 1], got {_shown(value)}")
    return p


def _probs(value: Any, n: int, where: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ConfigError(f"{where}: expected {n} probabilities, got {_shown(value)}")
    probs = tuple(_number(v, where) for v in value)
    if any(p < 0 for p in probs) or sum(probs) <= 0:
        raise ConfigError(f"{where}: probabilities must be >= 0 with a positive sum")
    return probs


def _odd_sizes(value: Any, where: str) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    sizes = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % 2 != 1:
            raise ConfigError(
                f"{where}: kernel sizes must be positive odd integers, got {_shown(v)}"
            )
        if v > MAX_KERNEL_SIZE:
            raise ConfigError(f"{where}: kernel sizes must be at most {MAX_KERNEL_SIZE}, got {v}")
        sizes.append(v)
    if not sizes:
        raise ConfigError(f"{where}: give at least one kernel size")
    return tuple(sizes)


def _names(value: Any, allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError(f"{where}: give at least one of {list(allowed)}")
    for v in items:
        if not isinstance(v, str) or v not in allowed:
            raise ConfigError(f"{where}: unknown value {_shown(v)}; choose from {list(allowed)}")
    return tuple(items)


def _fields(body: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where}: expected a mapping of fields, got {_shown(body)}")
    unknown = sorted(map(str, set(body) - allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {_shown(unknown)}; allowed: {sorted(allowed)}"
        )
    return dict(body)


def _pad_to(f: dict[str, Any], sizes: tuple[int, ...], where: str) -> int:
    pad_to = f.get("pad_to", max(sizes))
    _odd_sizes(pad_to, f"{where}.pad_to")
    if pad_to < max(sizes):
        raise ConfigError(f"{where}.pad_to: must be >= the largest kernel size {max(sizes)}")
    return int(pad_to)


def _parse_blur(body: Any, where: str) -> BlurStage:
    allowed = {"kernel_size", "pad_to", "kernel_list", "kernel_prob", "sigma_x", "sigma_y"}
    allowed |= {"rotation", "betag", "betap", "sinc_prob", "sinc_cutoff", "probability"}
    f = _fields(body, allowed, where)
    for key in ("kernel_size", "sigma_x"):
        if key not in f:
            raise ConfigError(f"{where}: missing required field {key!r}")
    sizes = _odd_sizes(f["kernel_size"], f"{where}.kernel_size")
    kernel_list = _names(f.get("kernel_list", ["iso"]), KERNEL_TYPES, f"{where}.kernel_list")
    kernel_prob = _probs(
        f.get("kernel_prob", [1.0] * len(kernel_list)), len(kernel_list), f"{where}.kernel_prob"
    )
    lo, hi = SIGMA_LIMITS
    sigma_x = _range(f["sigma_x"], f"{where}.sigma_x", low=lo, high=hi)
    sigma_y = _range(f.get("sigma_y", list(sigma_x)), f"{where}.sigma_y", low=lo, high=hi)
    cutoff_raw = f.get("sinc_cutoff", ["pi/3", "pi"])
    if isinstance(cutoff_raw, Mapping):
        cutoff = []
        for key, rng in cutoff_raw.items():
            try:
                min_size = int(key)
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(
                    f"{where}.sinc_cutoff: keys are kernel sizes, got {_shown(key)}"
                ) from None
            cutoff.append((min_size, _range(rng, f"{where}.sinc_cutoff.{key}", low=1e-6)))
        cutoff.sort()
    else:
        cutoff = [(1, _range(cutoff_raw, f"{where}.sinc_cutoff", low=1e-6))]
    if any(hi > math.pi + 1e-9 for _, (_, hi) in cutoff):
        raise ConfigError(f"{where}.sinc_cutoff: cutoffs must not exceed pi")
    return BlurStage(
        kernel_sizes=sizes,
        pad_to=_pad_to(f, sizes, where),
        kernel_list=kernel_list,
        kernel_prob=kernel_prob,
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        rotation=_range(f.get("rotation", ["-pi", "pi"]), f"{where}.rotation"),
        betag=_range(f.get("betag", [0.5, 4]), f"{where}.betag", low=1e-6),
        betap=_range(f.get("betap", [1, 2]), f"{where}.betap", low=1e-6),
        sinc_prob=_prob(f.get("sinc_prob", 0.0), f"{where}.sinc_prob"),
        sinc_cutoff=tuple(cutoff),
        probability=_prob(f.get("probability", 1.0), f"{where}.probability"),
    )


def _parse_sinc(body: Any, where: str) -> SincStage:
    f = _fields(body, {"kernel_size", "pad_to", "cutoff", "probability"}, where)
    if "kernel_size" not in f:
        raise ConfigError(f"{where}: missing required field 'kernel_size'")
    sizes = _odd_sizes(f["kernel_size"], f"{where}.kernel_size")
    cutoff = _range(f.get("cutoff", ["pi/3", "pi"]), f"{where}.cutoff", low=1e-6)
    if cutoff[1] > math.pi + 1e-9:
        raise ConfigError(f"{where}.cutoff: cutoffs must not exceed pi")
    return SincStage(
        kernel_sizes=sizes,
        pad_to=_pad_to(f, sizes, where),
        cutoff=cutoff,
        probability=_prob(f.get("probability", 1.0), f"{where}.probability"),
    )


def _parse_resize(body: Any, where: str) -> ResizeStage:
    allowed = {"base", "divisor", "downsample", "updown_prob", "up_range", "down_range"}
    f = _fields(body, allowed | {"modes", "probability"}, where)
    base = f.get("base", "current")
    if base not in ("current", "hq"):
        raise ConfigError(f"{where}.base: must be 'current' or 'hq', got {base!r}")
    divisor = _number(f.get("divisor", 1.0), f"{where}.divisor")
    if divisor <= 0:
        raise ConfigError(f"{where}.divisor: must be > 0, got {divisor:g}")
    if "downsample" in f and "updown_prob" in f:
        raise ConfigError(f"{where}: give either 'downsample' or 'updown_prob', not both")
    downsample = None
    if "downsample" in f:
        downsample = _range(f["downsample"], f"{where}.downsample", low=1e-6)
    updown = None
    if "updown_prob" in f:
        updown = _probs(f["updown_prob"], 3, f"{where}.updown_prob")
    return ResizeStage(
        base=base,
        divisor=divisor,
        downsample=downsample,
        updown_prob=updown,
        up_range=_range(f.get("up_range", [1, 1]), f"{where}.up_range", low=1e-6),
        down_range=_range(f.get("down_range", [1, 1]), f"{where}.down_range", low=1e-6),
        modes=_names(f.get("modes", ["bilinear"]), RESIZE_MODES, f"{where}.modes"),
        probability=_prob(f.get("probability", 1.0), f"{where}.probability"),
    )


def _parse_noise(body: Any, where: str) -> NoiseStage:
    allowed = {"gaussian_sigma", "poisson_scale", "gaussian_prob", "gray_prob", "probability"}
    f = _fields(body, allowed, where)
    gaussian_prob = _prob(f.get("gaussian_prob", 1.0), f"{where}.gaussian_prob")
    if gaussian_prob > 0 and "gaussian_sigma" not in f:
        raise ConfigError(f"{where}: missing 'gaussian_sigma' (gaussian_prob > 0)")
    if gaussian_prob < 1 and "poisson_scale" not in f:
        raise ConfigError(f"{where}: missing 'poisson_scale' (gaussian_prob < 1)")
    return NoiseStage(
        gaussian_sigma=_range(
            f.get("gaussian_sigma", [0, 0]), f"{where}.gaussian_sigma", low=0, high=MAX_NOISE_SIGMA
        ),
        poisson_scale=_range(f.get("poisson_scale", [0, 0]), f"{where}.poisson_scale", low=0),
        gaussian_prob=gaussian_prob,
        gray_prob=_prob(f.get("gray_prob", 0.0), f"{where}.gray_prob"),
        probability=_prob(f.get("probability", 1.0), f"{where}.probability"),
    )


def _parse_jpeg(body: Any, where: str) -> JpegStage:
    f = _fields(body, {"quality", "probability"}, where)
    if "quality" not in f:
        raise ConfigError(f"{where}: missing required field 'quality'")
    lo, hi = _range(f["quality"], f"{where}.quality")
    if lo < 1 or hi > 100 or lo != int(lo) or hi != int(hi):
        raise ConfigError(
            f"{where}.quality: must be integers in 1..100, got {_shown(f['quality'])}"
        )
    return JpegStage(
        quality=(int(lo), int(hi)),
        probability=_prob(f.get("probability", 1.0), f"{where}.probability"),
    )


def _parse_random_order(body: Any, where: str) -> RandomOrderStage:
    if not isinstance(body, (list, tuple)) or not 2 <= len(body) <= MAX_RANDOM_ORDER_GROUPS:
        raise ConfigError(f"{where}: expected a list of 2 to {MAX_RANDOM_ORDER_GROUPS} stage lists")
    groups = tuple(_parse_stages(group, f"{where}[{i}]") for i, group in enumerate(body))
    return RandomOrderStage(groups=groups)


_STAGE_PARSERS = {
    "blur": _parse_blur,
    "sinc": _parse_sinc,
    "resize": _parse_resize,
    "noise": _parse_noise,
    "jpeg": _parse_jpeg,
    "random_order": _parse_random_order,
}


def _parse_stages(items: Any, where: str) -> tuple[Stage, ...]:
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"{where}: expected a non-empty list of stages")
    stages = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping) or len(item) != 1:
            raise ConfigError(
                f"{here}: each stage is a mapping with one key, the stage type "
                f"({', '.join(_STAGE_PARSERS)}), got {_shown(item)}"
            )
        ((kind, body),) = item.items()
        parser = _STAGE_PARSERS.get(kind) if isinstance(kind, str) else None
        if parser is None:
            raise ConfigError(
                f"{here}: unknown stage type {_shown(kind)}; choose from {list(_STAGE_PARSERS)}"
            )
        stages.append(parser(body, f"{here}.{kind}"))
    return tuple(stages)


# ---------------------------------------------------------------- size bounds


# How large can an intermediate image get? Each stage list maps the side x of its input
# (relative to the HQ side) to at most max(m * x, c): a resize of the current size scales
# (m = growth), one of the HQ size resets (c = growth / divisor). Such maps compose and
# take maxima in the same form, so the worst case over every range and every order of a
# random_order stage is exact and cheap.
Growth = tuple[float, float]  # (m, c): x -> max(m * x, c)
_IDENTITY: Growth = (1.0, 0.0)


def _then(first: Growth, second: Growth) -> Growth:
    return (second[0] * first[0], max(second[0] * first[1], second[1]))


def _either(a: Growth, b: Growth) -> Growth:
    return (max(a[0], b[0]), max(a[1], b[1]))


def _at(g: Growth, x: float) -> float:
    return max(g[0] * x, g[1])


def _resize_growth(stage: ResizeStage) -> Growth:
    if stage.downsample is not None:
        factor = 1.0 / stage.downsample[0]
    elif stage.updown_prob is not None:
        up, down, keep = stage.updown_prob
        factors = [1.0] if keep > 0 else []
        factors += [stage.up_range[1]] if up > 0 else []
        factors += [stage.down_range[1]] if down > 0 else []
        factor = max(factors)
    else:
        factor = 1.0
    # A stage that may not apply (probability < 1) may also keep the size as it is.
    keeps = stage.probability < 1
    if stage.base == "current":
        return (max(factor, 1.0) if keeps else factor, 0.0)
    return (1.0 if keeps else 0.0, factor / stage.divisor)


def _stage_growth(stage: Stage) -> tuple[Growth, Growth]:
    """(final size map, largest size seen on the way) of one stage."""
    if isinstance(stage, ResizeStage):
        g = _resize_growth(stage)
        return g, _either(g, _IDENTITY)
    if isinstance(stage, RandomOrderStage):
        groups = [_list_growth(group) for group in stage.groups]
        final: Growth = (0.0, 0.0)
        peak: Growth = _IDENTITY
        for order in itertools.permutations(range(len(groups))):
            current = _IDENTITY
            for g in order:
                peak = _either(peak, _then(current, groups[g][1]))
                current = _then(current, groups[g][0])
            final = _either(final, current)
        return final, peak
    return _IDENTITY, _IDENTITY


def _list_growth(stages: tuple[Stage, ...]) -> tuple[Growth, Growth]:
    current, peak = _IDENTITY, _IDENTITY
    for stage in stages:
        final, seen = _stage_growth(stage)
        peak = _either(peak, _then(current, seen))
        current = _then(current, final)
    return current, peak


def _growth_field(stage: ResizeStage) -> str:
    """The field of a resize stage that sets its largest factor (for messages)."""
    if stage.downsample is not None:
        field = "downsample"
    elif stage.updown_prob is not None:
        up, down, _ = stage.updown_prob
        big_up = up > 0 and (down <= 0 or stage.up_range[1] >= stage.down_range[1])
        field = "up_range" if big_up else "down_range"
    else:
        field = "base"
    if stage.base == "hq" and stage.divisor < 1:
        field = "divisor"
    return f"resize.{field}"


def _check_enlargement(stages: tuple[Stage, ...]) -> None:
    """Refuse ranges that could make an image larger than MAX_ENLARGEMENT x the HQ side."""
    current = _IDENTITY
    for i, stage in enumerate(stages):
        final, seen = _stage_growth(stage)
        worst = _at(_then(current, seen), 1.0)
        if worst > MAX_ENLARGEMENT * (1 + 1e-9):
            where = f"stages[{i}]." + (
                _growth_field(stage) if isinstance(stage, ResizeStage) else "random_order"
            )
            raise ConfigError(
                f"{where}: allows images up to {worst:.4g}x the HQ size per side (after the "
                f"stages before it); at most {MAX_ENLARGEMENT:g}x is allowed"
            )
        current = _then(current, final)


def _parse_usm(value: Any) -> UsmSettings | None:
    if value is None or value is False:
        return None
    if value is True:
        return UsmSettings()
    f = _fields(value, {"weight", "threshold", "radius"}, "sharpen_hq")
    radius = f.get("radius", 50)
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ConfigError(f"sharpen_hq.radius: must be a positive integer, got {_shown(radius)}")
    if radius > MAX_KERNEL_SIZE:
        raise ConfigError(f"sharpen_hq.radius: must be at most {MAX_KERNEL_SIZE}, got {radius}")
    return UsmSettings(
        weight=_number(f.get("weight", 0.5), "sharpen_hq.weight"),
        threshold=_number(f.get("threshold", 10), "sharpen_hq.threshold"),
        radius=radius,
    )


def parse_config(data: Any) -> PipelineConfig:
    """Validate a configuration mapping (as read from YAML/TOML) into a PipelineConfig."""
    allowed = {"name", "description", "sharpen_hq", "quantize", "resize_back", "stages"}
    f = _fields(data, allowed, "pipeline")
    if "stages" not in f:
        raise ConfigError("pipeline: missing required field 'stages'")
    quantize = f.get("quantize", False)
    if not isinstance(quantize, bool):
        raise ConfigError(f"quantize: expected true or false, got {_shown(quantize)}")
    resize_back = f.get("resize_back", "bicubic")
    if not isinstance(resize_back, str) or resize_back not in RESIZE_MODES:
        raise ConfigError(
            f"resize_back: unknown mode {_shown(resize_back)}; choose from {RESIZE_MODES}"
        )
    stages = _parse_stages(f["stages"], "stages")
    _check_enlargement(stages)
    return PipelineConfig(
        stages=stages,
        name=str(f.get("name", "custom")),
        description=str(f.get("description", "")),
        sharpen_hq=_parse_usm(f.get("sharpen_hq")),
        quantize=quantize,
        resize_back=resize_back,
    )


def _toml_module(path: Path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                f"{printable(path)}: TOML configs need Python 3.11+ or tomli"
            ) from None
    return tomllib


def _syntax_error(exc: Exception) -> str:
    """One line from a YAML/TOML parser's error: the problem and where it is."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:  # PyYAML's multi-line message, condensed
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split()) or type(exc).__name__


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline from a ``.yaml``/``.yml`` or ``.toml`` file."""
    path = Path(path)
    shown = printable(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"cannot read degradation config {shown}: {reason}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = _toml_module(path).loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{shown}: degradation configs must be .yaml, .yml or .toml")
    except ConfigError:
        raise
    except Exception as exc:  # the parsers' own syntax errors
        raise ConfigError(
            f"{shown}: not valid {suffix[1:].upper()}: {printable(_syntax_error(exc))}"
        ) from None
    try:
        config = parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    if "name" not in (data or {}):
        config = PipelineConfig(**{**config.__dict__, "name": path.stem})
    return config
