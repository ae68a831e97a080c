"""Second-order Real-ESRGAN degradation as the release applies it in training (DiffBIR v2.1).

The work is split as in the release:

* :func:`draw_sample_kernels` runs per image in a data-loader worker (numpy RNG): the
  first and second blur kernels (a random mixed kernel, or with ``sinc_prob`` a sinc) and
  the final sinc kernel (with ``final_sinc_prob``, else the identity), each zero-padded to
  a fixed size so that a batch stacks;
* :class:`RealESRGANBatchDegradation` runs on the device, a batch at a time: the target is
  the USM-sharpened HQ; the LQ is blur -> resize -> noise -> JPEG, then (with
  ``second_blur_prob``) blur -> resize to ``1 / stage2_scale`` of the HQ size times a
  random factor -> noise -> either [resize to ``1 / stage2_scale`` + final sinc] then
  JPEG, or JPEG then [resize + final sinc] (50/50), resized back (bicubic) to the HQ size
  and rounded to 8 bits;
* :class:`~diffbir.degradation.pool.TrainingPool` mixes samples across batches, because
  the resize factors and modes, the noise kind (Gaussian or Poisson) and the order of the
  last steps are drawn once per batch, as in the release; noise levels, gray noise and
  JPEG qualities are drawn per image. :class:`RealESRGANTrainingTransform` chains both;
  :func:`load_realesrgan_batch` gives the training loop's form (draws from its generator).

Where we differ from the release: every draw comes from a supplied numpy ``Generator``
(parameters) and ``torch.Generator`` (noise fields) instead of the global RNGs; gray
Gaussian noise is drawn per image (the release's batched version draws one gray field
and shares it, scaled, across the batch); the JPEG step is :mod:`.torch_jpeg` (the
release's DiffJPEG arithmetic; tables clamped at 1, which changes nothing up to
quality 95). Images too small for a reflection pad of the kernel radius use an edge pad
(the release fails there; at its 512x512 training size this never happens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffbir.degradation import kernels as K
from diffbir.degradation import ops
from diffbir.degradation.pool import TrainingPool
from diffbir.degradation.torch_jpeg import jpeg_round_trip
from diffbir.errors import ConfigError

Range = tuple[float, float]

#: Resize modes the release picks from, uniformly, at every resize.
RESIZE_MODES = ("area", "bilinear", "bicubic")
#: Blur kernel sizes start here (odd sizes up to the configured ``blur_kernel_size``).
MIN_KERNEL_SIZE = 7
#: Sinc cutoff ranges of the blur kernels: below this size ``SINC_CUTOFF_SMALL``, else
#: ``SINC_CUTOFF_LARGE``; the final sinc always uses ``SINC_CUTOFF_SMALL``.
SINC_SIZE_SPLIT = 13
SINC_CUTOFF_SMALL = (math.pi / 3, math.pi)
SINC_CUTOFF_LARGE = (math.pi / 5, math.pi)
#: Probability of "[resize back + sinc] then JPEG" (else "JPEG then [resize back + sinc]").
RESIZE_SINC_FIRST_PROB = 0.5
#: USM sharpening of the target (BasicSR's USMSharp defaults, as the release calls it).
USM_RADIUS, USM_WEIGHT, USM_THRESHOLD = 50, 0.5, 10.0


@dataclass(frozen=True)
class RealESRGANTrainingConfig:
    """Settings of the release's Real-ESRGAN training degradation; defaults are v2.1's.

    Field names are the release's (``configs/train/train_stage2_v2.1.yaml``): the first
    group is the dataset's (kernels, drawn in the workers), the second the batch
    transform's (applied on the device). ``resize_prob`` is (up, down, keep);
    ``resize_range`` is (lowest down factor, highest up factor). ``stage2_scale`` is a
    number or a (low, high) range drawn per batch.
    """

    # kernels (the dataset, per image)
    blur_kernel_size: int = 21
    kernel_list: tuple[str, ...] = K.KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    blur_sigma: Range = (0.2, 3.0)
    betag_range: Range = (0.5, 4.0)
    betap_range: Range = (1.0, 2.0)
    sinc_prob: float = 0.1
    blur_kernel_size2: int = 21
    kernel_list2: tuple[str, ...] = K.KERNEL_TYPES
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    blur_sigma2: Range = (0.2, 1.5)
    betag_range2: Range = (0.5, 4.0)
    betap_range2: Range = (1.0, 2.0)
    sinc_prob2: float = 0.1
    final_sinc_prob: float = 0.8
    # the batch transform (on the device)
    use_sharpener: bool = True
    queue_size: int = 256
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: Range = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: Range = (1.0, 30.0)
    poisson_scale_range: Range = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: Range = (30.0, 95.0)
    second_blur_prob: float = 0.8
    stage2_scale: float | Range = 4.0
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: Range = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: Range = (1.0, 25.0)
    poisson_scale_range2: Range = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: Range = (30.0, 95.0)

    def __post_init__(self) -> None:
        for suffix in ("", "2"):
            size = getattr(self, f"blur_kernel_size{suffix}")
            if not isinstance(size, int) or size < MIN_KERNEL_SIZE or size % 2 != 1 or size > 201:
                raise ConfigError(
                    f"blur_kernel_size{suffix} must be an odd integer in 7..201, got {size!r}"
                )
            kinds, prob = (
                getattr(self, f"kernel_list{suffix}"),
                getattr(self, f"kernel_prob{suffix}"),
            )
            unknown = [k for k in kinds if k not in K.KERNEL_TYPES]
            if unknown:
                raise ConfigError(f"kernel_list{suffix}: unknown kernel type(s) {unknown}")
            if len(kinds) != len(prob) or not kinds:
                raise ConfigError(f"kernel_prob{suffix} needs one probability per kernel type")
            _check_weights(f"kernel_prob{suffix}", prob)
            _check_range(f"blur_sigma{suffix}", getattr(self, f"blur_sigma{suffix}"), 1e-3, 1e3)
            _check_range(f"betag_range{suffix}", getattr(self, f"betag_range{suffix}"), 1e-3, 1e3)
            _check_range(f"betap_range{suffix}", getattr(self, f"betap_range{suffix}"), 1e-3, 1e3)
            _check_range(f"resize_range{suffix}", getattr(self, f"resize_range{suffix}"), 1e-3, 8.0)
            lo, hi = getattr(self, f"resize_range{suffix}")
            if not lo <= 1 <= hi:
                raise ConfigError(f"resize_range{suffix} must contain 1, got {[lo, hi]}")
            if len(getattr(self, f"resize_prob{suffix}")) != 3:
                raise ConfigError(f"resize_prob{suffix} must be (up, down, keep)")
            _check_weights(f"resize_prob{suffix}", getattr(self, f"resize_prob{suffix}"))
            _check_range(f"noise_range{suffix}", getattr(self, f"noise_range{suffix}"), 0.0, 255.0)
            _check_range(
                f"poisson_scale_range{suffix}",
                getattr(self, f"poisson_scale_range{suffix}"),
                0.0,
                1e3,
            )
            _check_range(f"jpeg_range{suffix}", getattr(self, f"jpeg_range{suffix}"), 1.0, 100.0)
            for name in ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
                _check_probability(f"{name}{suffix}", getattr(self, f"{name}{suffix}"))
        for name in ("final_sinc_prob", "second_blur_prob"):
            _check_probability(name, getattr(self, name))
        if not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ConfigError(f"queue_size must be a positive integer, got {self.queue_size!r}")
        scale = self.stage2_scale
        if isinstance(scale, tuple):
            _check_range("stage2_scale", scale, 1.0, 64.0)
        elif not (isinstance(scale, (int, float)) and 1 <= scale <= 64):
            raise ConfigError(f"stage2_scale must be a number in [1, 64] or a range, got {scale!r}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> RealESRGANTrainingConfig:
        """A config from the release's keys (any subset; the rest keep v2.1's values)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(mapping) - set(known))
        if unknown:
            raise ConfigError(f"unknown Real-ESRGAN degradation setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            default = known[key].default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{key} must be true or false, got {value!r}")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{key} must be an integer, got {value!r}")
            elif isinstance(value, (list, tuple)):
                if isinstance(default, tuple) and isinstance(default[0], str):
                    value = tuple(str(v) for v in value)
                else:
                    value = tuple(_number(key, v) for v in value)
            elif isinstance(default, tuple) and key != "stage2_scale":
                raise ConfigError(f"{key} must be a list, got {value!r}")
            else:
                value = _number(key, value)
            values[key] = value
        return cls(**values)

    def kernel_sizes(self, second: bool = False) -> tuple[int, ...]:
        """The odd kernel sizes drawn for the first (or second) blur: 7 .. blur_kernel_size."""
        top = self.blur_kernel_size2 if second else self.blur_kernel_size
        return tuple(range(MIN_KERNEL_SIZE, top + 1, 2))


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} must hold finite numbers, got {value!r}")
    return float(value)


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {p!r}")


def _check_weights(name: str, weights: Sequence[float]) -> None:
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(
            f"{name} must be non-negative weights with a positive sum, got {list(weights)}"
        )


def _check_range(name: str, value: Sequence[float], lo: float, hi: float) -> None:
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise ConfigError(f"{name} must be [low, high] within [{lo:g}, {hi:g}], got {list(value)}")


# ---------------------------------------------------------------------- kernels (workers)


@dataclass(frozen=True)
class SampleKernels:
    """One image's kernels (float32, zero-padded squares) and the parameters drawn."""

    kernel1: np.ndarray
    kernel2: np.ndarray
    sinc_kernel: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def as_tensors(self) -> dict[str, torch.Tensor]:
        """``{"kernel1", "kernel2", "sinc_kernel"}`` as CPU tensors (what a dataset returns)."""
        return {
            "kernel1": torch.from_numpy(self.kernel1),
            "kernel2": torch.from_numpy(self.kernel2),
            "sinc_kernel": torch.from_numpy(self.sinc_kernel),
        }


def _draw_blur_kernel(config, rng: np.random.Generator, second: bool):
    suffix = "2" if second else ""
    sizes = config.kernel_sizes(second)
    size = int(sizes[int(rng.integers(len(sizes)))])
    pad_to = getattr(config, f"blur_kernel_size{suffix}")
    if rng.random() < getattr(config, f"sinc_prob{suffix}"):
        lo, hi = SINC_CUTOFF_SMALL if size < SINC_SIZE_SPLIT else SINC_CUTOFF_LARGE
        cutoff = float(rng.uniform(lo, hi))
        kernel = K.sinc_kernel(cutoff, size)
        params: dict[str, Any] = {"type": "sinc", "cutoff": cutoff}
    else:
        sigma = getattr(config, f"blur_sigma{suffix}")
        kernel, params = K.random_mixed_kernel(
            rng,
            getattr(config, f"kernel_list{suffix}"),
            getattr(config, f"kernel_prob{suffix}"),
            size,
            sigma,
            sigma,
            (-math.pi, math.pi),
            getattr(config, f"betag_range{suffix}"),
            getattr(config, f"betap_range{suffix}"),
        )
    params["kernel_size"] = size
    return K.pad_kernel(kernel, pad_to).astype(np.float32), params


def draw_sample_kernels(
    config: RealESRGANTrainingConfig, rng: np.random.Generator
) -> SampleKernels:
    """Draw one image's blur kernels and final sinc kernel (for a data-loader worker)."""
    kernel1, p1 = _draw_blur_kernel(config, rng, second=False)
    kernel2, p2 = _draw_blur_kernel(config, rng, second=True)
    if rng.random() < config.final_sinc_prob:
        sizes = config.kernel_sizes()
        size = int(sizes[int(rng.integers(len(sizes)))])
        cutoff = float(rng.uniform(*SINC_CUTOFF_SMALL))
        sinc = K.sinc_kernel(cutoff, size, pad_to=config.blur_kernel_size)
        p3: dict[str, Any] | None = {"type": "sinc", "cutoff": cutoff, "kernel_size": size}
    else:
        sinc, p3 = K.delta_kernel(config.blur_kernel_size), None
    return SampleKernels(
        kernel1, kernel2, sinc.astype(np.float32), {"kernel1": p1, "kernel2": p2, "sinc": p3}
    )


def stack_kernels(samples: Sequence[SampleKernels]) -> dict[str, torch.Tensor]:
    """Stack the kernels of a batch of images into ``[B, K, K]`` tensors by name."""
    if not samples:
        raise ValueError("no kernels to stack")
    return {
        name: torch.from_numpy(np.stack([getattr(s, name) for s in samples]))
        for name in ("kernel1", "kernel2", "sinc_kernel")
    }


# ---------------------------------------------------------------------- batch parameters


@dataclass(frozen=True)
class ResizeDraw:
    """A per-batch resize: direction (up/down/keep), factor and mode."""

    direction: str
    scale: float
    mode: str


@dataclass(frozen=True)
class NoiseDraw:
    """Noise of a batch: one kind (gaussian/poisson), a level and a gray flag per image."""

    kind: str
    level: np.ndarray
    gray: np.ndarray


@dataclass(frozen=True)
class BatchPlan:
    """Every scalar draw of one batch (the noise fields come later, on the device)."""

    resize1: ResizeDraw
    noise1: NoiseDraw
    jpeg1: np.ndarray
    blur2: bool
    stage2_scale: float
    resize2: ResizeDraw
    noise2: NoiseDraw
    resize_sinc_first: bool
    resize_back_mode: str
    jpeg2: np.ndarray


def _draw_resize(rng, prob: Sequence[float], span: Range) -> ResizeDraw:
    p = np.asarray(prob, dtype=np.float64)
    direction = ("up", "down", "keep")[int(rng.choice(3, p=p / p.sum()))]
    if direction == "up":
        scale = float(rng.uniform(1.0, span[1]))
    elif direction == "down":
        scale = float(rng.uniform(span[0], 1.0))
    else:
        scale = 1.0
    mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    return ResizeDraw(direction, scale, mode)


def _draw_noise(rng, batch: int, gaussian_prob, sigma: Range, poisson: Range, gray_prob):
    if rng.random() < gaussian_prob:
        kind, span = "gaussian", sigma
    else:
        kind, span = "poisson", poisson
    level = rng.uniform(span[0], span[1], size=batch)
    gray = rng.random(batch) < gray_prob
    return NoiseDraw(kind, level, gray)


def draw_batch_plan(
    config: RealESRGANTrainingConfig, rng: np.random.Generator, batch_size: int
) -> BatchPlan:
    """Draw the per-batch and per-image scalars of one batch, in the release's order."""
    c = config
    resize1 = _draw_resize(rng, c.resize_prob, c.resize_range)
    noise1 = _draw_noise(
        rng,
        batch_size,
        c.gaussian_noise_prob,
        c.noise_range,
        c.poisson_scale_range,
        c.gray_noise_prob,
    )
    jpeg1 = rng.uniform(c.jpeg_range[0], c.jpeg_range[1], size=batch_size)
    blur2 = bool(rng.random() < c.second_blur_prob)
    if isinstance(c.stage2_scale, tuple):
        stage2_scale = float(rng.uniform(*c.stage2_scale))
    else:
        stage2_scale = float(c.stage2_scale)
    resize2 = _draw_resize(rng, c.resize_prob2, c.resize_range2)
    noise2 = _draw_noise(
        rng,
        batch_size,
        c.gaussian_noise_prob2,
        c.noise_range2,
        c.poisson_scale_range2,
        c.gray_noise_prob2,
    )
    resize_sinc_first = bool(rng.random() < RESIZE_SINC_FIRST_PROB)
    resize_back_mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    jpeg2 = rng.uniform(c.jpeg_range2[0], c.jpeg_range2[1], size=batch_size)
    return BatchPlan(
        resize1,
        noise1,
        jpeg1,
        blur2,
        stage2_scale,
        resize2,
        noise2,
        resize_sinc_first,
        resize_back_mode,
        jpeg2,
    )


# ---------------------------------------------------------------------- applying (device)


def usm_target(hq: torch.Tensor) -> torch.Tensor:
    """The training target: ``hq`` unsharp-masked with the release's radius/weight/threshold."""
    return ops.usm_sharpen(hq, USM_WEIGHT, USM_THRESHOLD, USM_RADIUS)


def _scale_resize(x: torch.Tensor, draw: ResizeDraw) -> torch.Tensor:
    # The first resize is by a factor (the release calls interpolate with scale_factor,
    # which also sets the sampling grid's spacing to 1/scale).
    if draw.scale == 1.0:
        return x
    h, w = x.shape[-2:]
    if math.floor(h * draw.scale) < 1 or math.floor(w * draw.scale) < 1:
        return ops.resize(x, (max(1, int(h * draw.scale)), max(1, int(w * draw.scale))), draw.mode)
    return F.interpolate(x, scale_factor=draw.scale, mode=draw.mode)


def _noise(x: torch.Tensor, draw: NoiseDraw, generator) -> torch.Tensor:
    gray = torch.from_numpy(draw.gray)
    if draw.kind == "gaussian":
        return ops.add_gaussian_noise(x, draw.level, gray, generator=generator)
    return ops.add_poisson_noise(x, draw.level, gray, generator=generator)


def _jpeg(x: torch.Tensor, quality: np.ndarray) -> torch.Tensor:
    # Clamp first, as the release does: out-of-range values make ugly JPEG artefacts.
    return jpeg_round_trip(x.clamp(0.0, 1.0), torch.from_numpy(quality)).to(x.dtype)


def degrade_batch(
    hq: torch.Tensor,
    kernels: Mapping[str, torch.Tensor],
    plan: BatchPlan,
    *,
    use_sharpener: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrade ``hq`` ``[B, 3, H, W]`` in [0, 1] with ``kernels`` and ``plan``: ``(lq, target)``.

    ``kernels`` holds ``kernel1``, ``kernel2`` and ``sinc_kernel``, each ``[B, K, K]``;
    noise fields come from ``generator`` (on ``hq``'s device). ``lq`` has the HQ size,
    8-bit levels in [0, 1]; ``target`` is the (sharpened) HQ.
    """
    if hq.ndim != 4 or hq.shape[1] != 3:
        raise ValueError(f"expected an RGB batch [B, 3, H, W], got {tuple(hq.shape)}")
    b, _, h, w = hq.shape
    ks = {}
    for name in ("kernel1", "kernel2", "sinc_kernel"):
        if name not in kernels:
            raise ValueError(f"missing {name!r} in the batch's kernels")
        k = torch.as_tensor(kernels[name]).to(device=hq.device, dtype=hq.dtype)
        if k.ndim != 3 or k.shape[0] != b:
            raise ValueError(f"{name} must be [{b}, K, K], got {tuple(k.shape)}")
        ks[name] = k
    if len(plan.jpeg1) != b or len(plan.jpeg2) != b:
        raise ValueError(f"the plan was drawn for {len(plan.jpeg1)} images, the batch has {b}")

    target = usm_target(hq) if use_sharpener else hq
    # first order
    out = ops.filter2d(target, ks["kernel1"])
    out = _scale_resize(out, plan.resize1)
    out = _noise(out, plan.noise1, generator)
    out = _jpeg(out, plan.jpeg1)
    # second order
    if plan.blur2:
        out = ops.filter2d(out, ks["kernel2"])
    small = (int(h / plan.stage2_scale), int(w / plan.stage2_scale))
    size2 = (max(1, int(small[0] * plan.resize2.scale)), max(1, int(small[1] * plan.resize2.scale)))
    out = ops.resize(out, size2, plan.resize2.mode)
    out = _noise(out, plan.noise2, generator)
    if plan.resize_sinc_first:
        out = ops.resize(out, small, plan.resize_back_mode)
        out = ops.filter2d(out, ks["sinc_kernel"])
        out = _jpeg(out, plan.jpeg2)
    else:
        out = _jpeg(out, plan.jpeg2)
        out = ops.resize(out, small, plan.resize_back_mode)
        out = ops.filter2d(out, ks["sinc_kernel"])
    if plan.stage2_scale != 1:
        out = ops.resize(out, (h, w), "bicubic")
    return ops.quantize(out), target


def _seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


class RealESRGANBatchDegradation:
    """HQ batch -> ``(lq, target)`` on ``device``, with the release's training degradation.

    ``seed`` seeds the parameter draws (numpy) and, through them, the noise fields (a
    ``torch.Generator`` on ``device``): the same seed and inputs give the same batch on
    the same device. Kernels come with the batch (drawn in the workers by
    :func:`draw_sample_kernels`) or, when not given, are drawn here.
    """

    def __init__(
        self,
        config: RealESRGANTrainingConfig | Mapping[str, Any] | None = None,
        *,
        device: torch.device | str = "cpu",
        seed: int | None = None,
    ):
        if config is None:
            config = RealESRGANTrainingConfig()
        elif not isinstance(config, RealESRGANTrainingConfig):
            config = RealESRGANTrainingConfig.from_mapping(config)
        self.config = config
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(_seed_from(self.rng))

    def __repr__(self) -> str:
        return f"RealESRGANBatchDegradation(device={str(self.device)!r})"

    def draw_kernels(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Draw ``batch_size`` images' kernels here (when the data loader did not)."""
        return stack_kernels(
            [draw_sample_kernels(self.config, self.rng) for _ in range(batch_size)]
        )

    def draw_plan(self, batch_size: int) -> BatchPlan:
        """Draw the next batch's scalar parameters."""
        return draw_batch_plan(self.config, self.rng, batch_size)

    @torch.no_grad()
    def __call__(
        self, hq: torch.Tensor, kernels: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Degrade ``hq`` ``[B, 3, H, W]`` in [0, 1]; returns ``(lq, target)`` on ``device``."""
        if hq.ndim != 4 or hq.shape[1] != 3:
            raise ValueError(f"expected an RGB batch [B, 3, H, W], got {tuple(hq.shape)}")
        hq = hq.to(self.device, torch.float32)
        if kernels is None:
            kernels = self.draw_kernels(hq.shape[0])
        plan = self.draw_plan(hq.shape[0])
        return degrade_batch(
            hq, kernels, plan, use_sharpener=self.config.use_sharpener, generator=self.generator
        )

    def state_dict(self) -> dict[str, Any]:
        """The random state (to resume a run draw for draw)."""
        return {"rng": self.rng.bit_generator.state, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])


class RealESRGANTrainingTransform:
    """What the release's batch transform does: degrade on the device, then the pool.

    ``transform(hq, kernels, texts)`` returns ``(lq, target, texts)``: both images NCHW in
    [0, 1] at the HQ size (the release hands the target on in [-1, 1], NHWC; scaling and
    layout are the caller's). The pool holds ``config.queue_size`` samples, which must be
    a multiple of the batch size per process.
    """

    def __init__(
        self,
        config: RealESRGANTrainingConfig | Mapping[str, Any] | None = None,
        *,
        device: torch.device | str = "cpu",
        seed: int | None = None,
    ):
        self.degrade = RealESRGANBatchDegradation(config, device=device, seed=seed)
        pool_seed = _seed_from(np.random.default_rng(None if seed is None else [seed, 1]))
        self.pool = TrainingPool(self.degrade.config.queue_size, seed=pool_seed)

    @property
    def config(self) -> RealESRGANTrainingConfig:
        """The degradation's settings."""
        return self.degrade.config

    def __call__(
        self,
        hq: torch.Tensor,
        kernels: Mapping[str, torch.Tensor] | None = None,
        texts: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Degrade a batch and swap it through the pool: ``(lq, target, texts)``."""
        texts = [""] * hq.shape[0] if texts is None else list(texts)
        if len(texts) != hq.shape[0]:
            raise ValueError(f"{len(texts)} texts for a batch of {hq.shape[0]} images")
        lq, target = self.degrade(hq, kernels)
        lq, target, texts = self.pool(lq, target, texts)
        return lq, target, list(texts)

    def state_dict(self) -> dict[str, Any]:
        """Random state and pool contents (to resume exactly)."""
        return {"degrade": self.degrade.state_dict(), "pool": self.pool.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.degrade.load_state_dict(state["degrade"])
        self.pool.load_state_dict(state["pool"])


class RealESRGANLoopDegradation:
    """The training loop's form: ``(hq, prompts, generator) -> (target, lq, prompts)``.

    Every draw derives from the loop's ``generator`` (one integer per batch seeds the
    kernels, the plan and the pool's shuffle; the noise fields come from ``generator``
    itself when it lives on ``hq``'s device), so a run that restores its generator and
    this object's :meth:`state_dict` (the pool) continues draw for draw. Kernels are drawn
    here, since the loop's data loader yields HQ images only.
    """

    def __init__(
        self,
        config: RealESRGANTrainingConfig | Mapping[str, Any] | None = None,
        *,
        device: torch.device | str = "cpu",
    ):
        if config is None:
            config = RealESRGANTrainingConfig()
        elif not isinstance(config, RealESRGANTrainingConfig):
            config = RealESRGANTrainingConfig.from_mapping(config)
        self.config = config
        self.device = torch.device(device)
        self.pool = TrainingPool(config.queue_size, seed=0)

    def __repr__(self) -> str:
        return f"RealESRGANLoopDegradation(queue_size={self.config.queue_size}, device={str(self.device)!r})"

    @torch.no_grad()
    def __call__(
        self, hq: torch.Tensor, prompts: Sequence[str], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Degrade a batch on ``device`` and swap it through the pool."""
        if hq.ndim != 4 or hq.shape[1] != 3:
            raise ValueError(f"expected an RGB batch [B, 3, H, W], got {tuple(hq.shape)}")
        b = hq.shape[0]
        if len(prompts) != b:
            raise ValueError(f"{len(prompts)} prompts for a batch of {b} images")
        if self.config.queue_size % b:
            raise ConfigError(
                f"the Real-ESRGAN training pool (queue_size {self.config.queue_size}) must be a "
                f"multiple of the batch size per process ({b})"
            )
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
        hq = hq.to(self.device, torch.float32)
        kernels = stack_kernels([draw_sample_kernels(self.config, rng) for _ in range(b)])
        plan = draw_batch_plan(self.config, rng, b)
        noise = generator
        if generator.device != hq.device:
            noise = torch.Generator(device=hq.device)
            noise.manual_seed(_seed_from(rng))
        lq, target = degrade_batch(
            hq, kernels, plan, use_sharpener=self.config.use_sharpener, generator=noise
        )
        self.pool.generator.manual_seed(_seed_from(rng))
        lq, target, out_prompts = self.pool(lq, target, list(prompts))
        return target, lq, list(out_prompts)

    def state_dict(self) -> dict[str, Any]:
        """The pool (contents and fill level)."""
        return {"pool": self.pool.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.pool.load_state_dict(state["pool"])


def load_realesrgan_batch(
    config: RealESRGANTrainingConfig | Mapping[str, Any] | None = None,
    *,
    device: torch.device | str = "cpu",
) -> RealESRGANLoopDegradation:
    """The release's v2.1 training degradation (or ``config``) in the training loop's form."""
    return RealESRGANLoopDegradation(config, device=device)
