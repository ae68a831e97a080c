"""Degradation pipelines: a configuration (see :mod:`.config`) turned into HQ -> LQ pairs.

A pipeline runs in two steps so that parameters can be inspected and tests can draw many
of them cheaply: :meth:`DegradationPipeline.sample` draws every random parameter from a
``numpy.random.Generator`` into a *plan* (a list of per-stage records); then
:meth:`DegradationPipeline.apply` executes the plan on a batch, taking noise fields from
a ``torch.Generator``. ``pipeline(hq, rng)`` does both.

Per-image draws: kernels, noise type/level/gray, JPEG quality, and whether a probabilistic
blur, sinc, noise or JPEG stage applies. Per-batch draws (one tensor needs one size):
resize factors and modes, and the order of a ``random_order`` stage. With a batch of one
(the data-loader path) every draw is per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from diffbir.degradation import kernels as K
from diffbir.degradation import ops
from diffbir.degradation.config import (
    BlurStage,
    JpegStage,
    NoiseStage,
    PipelineConfig,
    RandomOrderStage,
    ResizeStage,
    SincStage,
    Stage,
    load_config,
    parse_config,
)
from diffbir.errors import ConfigError, printable

PRESETS = ("codeformer", "codeformer_face_v1", "realesrgan")

#: No resize may make an image larger than this (or than the HQ image, when larger): the
#: configuration bounds growth relative to the HQ, this bounds it for large HQ images.
MAX_RESIZE_PIXELS = 64_000_000

Plan = list[dict[str, Any]]


@dataclass
class Degraded:
    """A degraded batch: ``hq`` (the target, sharpened if configured), ``lq`` and the plan."""

    hq: torch.Tensor
    lq: torch.Tensor
    params: Plan = field(default_factory=list)


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator or a seed (None gives fresh OS entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class DegradationPipeline:
    """HQ batch ``[B, 3, H, W]`` in [0, 1] -> LQ batch, as a configuration describes."""

    def __init__(self, config: PipelineConfig | Mapping[str, Any]):
        self.config = config if isinstance(config, PipelineConfig) else parse_config(config)

    @property
    def name(self) -> str:
        """The configuration's name."""
        return self.config.name

    def __repr__(self) -> str:
        return f"DegradationPipeline({self.name!r}, {len(self.config.stages)} stages)"

    # ------------------------------------------------------------------ sampling

    def sample(
        self, rng: np.random.Generator | int, batch_size: int, hq_size: tuple[int, int]
    ) -> Plan:
        """Draw every random parameter for a batch of ``batch_size`` HQ images of ``hq_size``."""
        rng = as_generator(rng)
        hq_size = (int(hq_size[0]), int(hq_size[1]))
        plan, _ = _sample_stages(self.config.stages, rng, batch_size, hq_size, hq_size)
        return plan

    # ------------------------------------------------------------------ applying

    def apply(
        self,
        hq: torch.Tensor,
        plan: Plan,
        generator: torch.Generator | None = None,
        *,
        resize_back: bool = True,
    ) -> Degraded:
        """Run ``plan`` on ``hq``; noise fields come from ``generator`` (on ``hq``'s device).

        With ``resize_back`` the LQ is resized to the HQ size (``config.resize_back`` mode);
        without it, the LQ keeps the size the stages left it at.
        """
        if hq.ndim != 4 or hq.shape[1] != 3:
            raise ValueError(f"expected an RGB batch [B, 3, H, W], got {tuple(hq.shape)}")
        if self.config.sharpen_hq is not None:
            usm = self.config.sharpen_hq
            hq = ops.usm_sharpen(hq, usm.weight, usm.threshold, usm.radius)
        out = _apply_plan(hq, plan, generator, tuple(hq.shape[-2:]))
        if resize_back:
            out = ops.resize(out, tuple(hq.shape[-2:]), self.config.resize_back)
        out = ops.quantize(out) if self.config.quantize else out.clamp(0.0, 1.0)
        return Degraded(hq=hq, lq=out, params=plan)

    def __call__(
        self,
        hq: torch.Tensor,
        rng: np.random.Generator | int,
        *,
        resize_back: bool = True,
    ) -> Degraded:
        """Degrade ``hq`` with every draw taken from ``rng`` (same seed, same pair)."""
        rng = as_generator(rng)
        generator = torch.Generator(device=hq.device)
        generator.manual_seed(int(rng.integers(0, 2**63 - 1)))
        plan = self.sample(rng, hq.shape[0], tuple(hq.shape[-2:]))
        return self.apply(hq, plan, generator, resize_back=resize_back)


# ---------------------------------------------------------------------- presets / loading


def load_preset(name: str) -> PipelineConfig:
    """The configuration of a named preset (``codeformer``, ``codeformer_face_v1``, ``realesrgan``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown degradation preset {name!r}; choose from {list(PRESETS)}")

    text = resources.files("diffbir.degradation").joinpath("presets", f"{name}.yaml").read_text()
    return parse_config(yaml.safe_load(text))


def load_pipeline(spec: str | Path | PipelineConfig | Mapping[str, Any]) -> DegradationPipeline:
    """A pipeline from a preset name, a ``.yaml``/``.toml`` path, a config or a mapping."""
    if isinstance(spec, (PipelineConfig, Mapping)):
        return DegradationPipeline(spec)
    text = str(spec)
    if text in PRESETS:
        return DegradationPipeline(load_preset(text))
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".toml"):
        if not path.is_file():
            raise ConfigError(f"degradation config file not found: {printable(path)}")
        return DegradationPipeline(load_config(path))
    raise ConfigError(
        f"unknown degradation pipeline {printable(repr(text))}: give a preset "
        f"({', '.join(PRESETS)}) "
        "or a .yaml/.toml file"
    )


# ---------------------------------------------------------------------- sampling helpers


def _applies(rng: np.random.Generator, probability: float) -> bool:
    # Always consume one draw, so that later draws do not shift with the probability.
    return bool(rng.random() < probability)


def _sample_stages(stages, rng, batch, hq_size, size) -> tuple[Plan, tuple[int, int]]:
    plan: Plan = []
    for stage in stages:
        record, size = _sample_stage(stage, rng, batch, hq_size, size)
        plan.append(record)
    return plan, size


def _sample_stage(stage: Stage, rng, batch, hq_size, size):
    if isinstance(stage, BlurStage):
        return _sample_blur(stage, rng, batch), size
    if isinstance(stage, SincStage):
        return _sample_sinc(stage, rng, batch), size
    if isinstance(stage, ResizeStage):
        return _sample_resize(stage, rng, hq_size, size)
    if isinstance(stage, NoiseStage):
        return _sample_noise(stage, rng, batch), size
    if isinstance(stage, JpegStage):
        return _sample_jpeg(stage, rng, batch), size
    if isinstance(stage, RandomOrderStage):
        order = [int(i) for i in rng.permutation(len(stage.groups))]
        groups: list[Plan] = [[] for _ in stage.groups]
        for i in order:
            groups[i], size = _sample_stages(stage.groups[i], rng, batch, hq_size, size)
        return {"stage": "random_order", "order": order, "groups": groups}, size
    raise TypeError(f"not a degradation stage: {stage!r}")  # pragma: no cover


def _cutoff_range(stage: BlurStage, kernel_size: int) -> tuple[float, float]:
    chosen = stage.sinc_cutoff[0][1]
    for min_size, rng_ in stage.sinc_cutoff:
        if kernel_size >= min_size:
            chosen = rng_
    return chosen


def _sample_blur(stage: BlurStage, rng, batch) -> dict[str, Any]:
    params, kernels = [], []
    for _ in range(batch):
        if not _applies(rng, stage.probability):
            params.append(None)
            kernels.append(K.delta_kernel(stage.pad_to))
            continue
        size = int(rng.choice(stage.kernel_sizes))
        if stage.sinc_prob > 0 and _applies(rng, stage.sinc_prob):
            lo, hi = _cutoff_range(stage, size)
            cutoff = float(rng.uniform(lo, hi))
            kernel = K.sinc_kernel(cutoff, size)
            p = {"type": "sinc", "cutoff": cutoff}
        else:
            kernel, p = K.random_mixed_kernel(
                rng,
                stage.kernel_list,
                stage.kernel_prob,
                size,
                stage.sigma_x,
                stage.sigma_y,
                stage.rotation,
                stage.betag,
                stage.betap,
            )
        params.append({**p, "kernel_size": size})
        kernels.append(K.pad_kernel(kernel, stage.pad_to))
    return {"stage": "blur", "params": params, "kernels": np.stack(kernels)}


def _sample_sinc(stage: SincStage, rng, batch) -> dict[str, Any]:
    params, kernels = [], []
    for _ in range(batch):
        if not _applies(rng, stage.probability):
            params.append(None)
            kernels.append(K.delta_kernel(stage.pad_to))
            continue
        size = int(rng.choice(stage.kernel_sizes))
        cutoff = float(rng.uniform(*stage.cutoff))
        params.append({"type": "sinc", "cutoff": cutoff, "kernel_size": size})
        kernels.append(K.sinc_kernel(cutoff, size, pad_to=stage.pad_to))
    return {"stage": "sinc", "params": params, "kernels": np.stack(kernels)}


def _sample_resize(stage: ResizeStage, rng, hq_size, size):
    applied = _applies(rng, stage.probability)
    base = size if stage.base == "current" else hq_size
    base_h, base_w = int(base[0] / stage.divisor), int(base[1] / stage.divisor)
    direction, factor = "keep", None
    if stage.downsample is not None:
        factor = float(rng.uniform(*stage.downsample))
        direction = "down" if factor > 1 else "up" if factor < 1 else "keep"
        # CodeFormer's convention: the new side is floor(side / factor).
        new = (int(base_h // factor), int(base_w // factor))
        scale = 1.0 / factor
    elif stage.updown_prob is not None:
        p = np.asarray(stage.updown_prob) / sum(stage.updown_prob)
        direction = ("up", "down", "keep")[int(rng.choice(3, p=p))]
        if direction == "up":
            scale = float(rng.uniform(*stage.up_range))
        elif direction == "down":
            scale = float(rng.uniform(*stage.down_range))
        else:
            scale = 1.0
        new = (int(base_h * scale), int(base_w * scale))
    else:
        scale, new = 1.0, (base_h, base_w)
    mode = stage.modes[int(rng.integers(len(stage.modes)))]
    new = (max(1, new[0]), max(1, new[1]))
    limit = max(MAX_RESIZE_PIXELS, hq_size[0] * hq_size[1])
    if applied and new[0] * new[1] > limit:
        raise ConfigError(
            f"the degradation would resize a {hq_size[1]}x{hq_size[0]} image to "
            f"{new[1]}x{new[0]} ({new[0] * new[1] / 1e6:.0f} megapixels; at most "
            f"{limit / 1e6:.0f}): use smaller images or smaller resize ranges"
        )
    record = {
        "stage": "resize",
        "applied": applied,
        "direction": direction,
        "scale": scale,
        "factor": factor,  # the drawn downsample factor (None unless `downsample` is set)
        "mode": mode,
        "size": new,
    }
    return record, (new if applied else size)


def _sample_noise(stage: NoiseStage, rng, batch) -> dict[str, Any]:
    params = []
    for _ in range(batch):
        if not _applies(rng, stage.probability):
            params.append(None)
            continue
        if _applies(rng, stage.gaussian_prob):
            p = {"type": "gaussian", "sigma": float(rng.uniform(*stage.gaussian_sigma))}
        else:
            p = {"type": "poisson", "scale": float(rng.uniform(*stage.poisson_scale))}
        p["gray"] = _applies(rng, stage.gray_prob)
        params.append(p)
    return {"stage": "noise", "params": params}


def _sample_jpeg(stage: JpegStage, rng, batch) -> dict[str, Any]:
    qualities: list[int | None] = []
    for _ in range(batch):
        applied = _applies(rng, stage.probability)
        q = int(rng.integers(stage.quality[0], stage.quality[1] + 1))
        qualities.append(q if applied else None)
    return {"stage": "jpeg", "quality": qualities}


# ---------------------------------------------------------------------- applying helpers


def _apply_plan(x: torch.Tensor, plan: Plan, generator, hq_size) -> torch.Tensor:
    for record in plan:
        x = _apply_record(x, record, generator, hq_size)
    return x


def _apply_record(x, record, generator, hq_size):
    kind = record["stage"]
    if kind in ("blur", "sinc"):
        if all(p is None for p in record["params"]):
            return x
        return ops.filter2d(x, record["kernels"])
    if kind == "resize":
        return ops.resize(x, record["size"], record["mode"]) if record["applied"] else x
    if kind == "noise":
        return _apply_noise(x, record["params"], generator)
    if kind == "jpeg":
        if all(q is None for q in record["quality"]):
            return x
        return ops.jpeg_compress(x.clamp(0.0, 1.0), record["quality"])
    if kind == "random_order":
        for i in record["order"]:
            x = _apply_plan(x, record["groups"][i], generator, hq_size)
        return x
    raise ValueError(f"unknown plan record {kind!r}")  # pragma: no cover


def _apply_noise(x: torch.Tensor, params, generator) -> torch.Tensor:
    out = x.clone()
    for kind, op, key in (
        ("gaussian", ops.add_gaussian_noise, "sigma"),
        ("poisson", ops.add_poisson_noise, "scale"),
    ):
        idx = [i for i, p in enumerate(params) if p is not None and p["type"] == kind]
        if not idx:
            continue
        levels = [params[i][key] for i in idx]
        gray = [params[i]["gray"] for i in idx]
        index = torch.tensor(idx, device=x.device)
        out[index] = op(x[index], levels, gray, generator=generator)
    return out
