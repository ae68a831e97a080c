"""Training configuration: YAML -> validated dataclasses.

A config file has the sections ``data``, ``model``, ``optim``, ``run`` and ``val``;
``model`` differs between stage 1 (:class:`Stage1ModelConfig`) and stage 2
(:class:`Stage2ModelConfig`). Every field is checked against its annotation: unknown keys
and wrong types raise :class:`~diffbir.errors.ConfigError` naming the field path, e.g.
``optim.lr: expected a number, got 'fast'``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from diffbir.errors import ConfigError

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

STAGES = ("stage1", "stage2")
OPTIMIZERS = ("adamw", "adam", "adamw8bit")
PRECISIONS = ("no", "fp16", "bf16")
LATENT_SCALE = 0.18215


@dataclass
class DataConfig:
    """Where the HQ images come from and how LQ inputs are made (see ``PairedDataset``).

    The batch is given one of two ways: ``total_batch_size``, the images of one optimizer
    step over all processes (the released configs' ``batch_size``: accelerate splits it,
    ``split_batches=True``), split as ``total / (processes x grad_accumulation)`` per
    process and refused when it does not divide; or ``batch_size`` per process.

    Captions: ``caption_column`` (the short caption; null = no captions, every prompt
    empty), ``long_caption_column`` drawn instead with ``long_caption_prob``, then the
    prompt dropped to "" with ``empty_prompt_prob`` (the release's order). Folders take
    a caption from ``NAME.txt`` beside ``NAME.png`` when ``sidecar_captions``.
    """

    source: str = ""
    size: int = 512
    pipeline: str | dict | None = "codeformer"
    crop: str = "random"
    flip: bool = True
    path_column: str | None = None
    caption_column: str | None = "caption"
    long_caption_column: str | None = None
    long_caption_prob: float = 0.0
    sidecar_captions: bool = True
    empty_prompt_prob: float = 0.0
    batch_size: int | None = 16
    total_batch_size: int | None = None
    num_workers: int = 4
    list_cache: bool = True


@dataclass
class Stage1ModelConfig:
    """The restoration module: an architecture, its constructor overrides, optional init."""

    arch: str = "swinir"
    config: dict = field(default_factory=dict)
    init: str | None = None
    loss_reduction: str = "mean"


@dataclass
class Stage2ModelConfig:
    """Frozen SD + trainable LAControlNet, and the stage-1 model that makes the condition.

    ``sd_checkpoint`` None builds SD with random weights from the configs (tests and
    benchmarks only). ``cleaner`` None conditions on the LQ image itself.
    ``cond_noise_max_t`` > 0 noises the condition latent to a random t in
    ``[0, cond_noise_max_t)`` (condition-noise augmentation, the release's
    ``noise_aug_timestep``). ``clean_latent``: the HQ latent is a ``sample`` of the VAE
    posterior (as released) or its ``mode``; the condition latent is always the mode.
    ``latent_scale``: the SD latent scale factor (the released VAE's 0.18215; restore
    decodes with it, so no other value is accepted).
    """

    sd_checkpoint: str | None = "v2-1_512-ema-pruned.ckpt"
    controlnet: str | None = None
    prediction: str = "eps"
    schedule: str = "sd"
    unet_config: dict | None = None
    vae_config: dict | None = None
    text_config: dict | None = None
    controlnet_config: dict | None = None
    tokenizer: str | None = None
    weights_dir: str | None = None
    cleaner: str | None = None
    cleaner_arch: str | None = None
    cleaner_config: dict = field(default_factory=dict)
    cond_noise_max_t: int = 0
    clean_latent: str = "sample"
    latent_scale: float = 0.18215


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warmup, then constant)."""

    name: str = "adamw"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = None
    grad_accumulation: int = 1


@dataclass
class RunConfig:
    """Length, precision, checkpointing and logging of a run."""

    output_dir: str = "runs/train"
    max_steps: int = 1000
    seed: int = 231
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    log_every: int = 50
    save_every: int = 1000
    keep_last: int = 3
    tensorboard: bool = True


@dataclass
class ValConfig:
    """Periodic validation: stage 1 PSNR on ``source``; stage 2 samples written to disk.

    ``source`` null with ``every`` > 0 takes the first ``num_images`` training images
    (centre crops), as the release logs images of its training batch.
    """

    source: str | None = None
    every: int = 0
    num_images: int = 4
    sampler: str = "ddim"
    steps: int = 20


@dataclass
class TrainConfig:
    """A whole training run."""

    stage: str
    data: DataConfig
    model: Stage1ModelConfig | Stage2ModelConfig
    optim: OptimConfig
    run: RunConfig
    val: ValConfig

    def to_dict(self) -> dict:
        """Plain data (for YAML/JSON dumps and the run's record)."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    names |= {dict: "a mapping", list: "a list", type(None): "null"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked (and widened: int -> float) against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown field; {path} accepts {', '.join(names)}")
    return cls(**{k: _convert(v, hints[k], f"{path}.{k}") for k, v in data.items()})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate_values(cfg: TrainConfig) -> None:
    d, o, r, v = cfg.data, cfg.optim, cfg.run, cfg.val
    _check(bool(d.source), "data.source: required (a folder of images, a .txt list or a table)")
    _check(d.size >= 8 and d.size % 8 == 0, f"data.size: a multiple of 8, got {d.size}")
    _check(
        d.crop in ("random", "center", "resize", "none"),
        f"data.crop: random, center, resize or none, got {d.crop!r}",
    )
    _check(0.0 <= d.empty_prompt_prob <= 1.0, "data.empty_prompt_prob: must be in [0, 1]")
    _check(0.0 <= d.long_caption_prob <= 1.0, "data.long_caption_prob: must be in [0, 1]")
    _check(
        d.long_caption_prob == 0 or d.long_caption_column is not None,
        "data.long_caption_prob: needs data.long_caption_column",
    )
    _check(
        (d.batch_size is None) != (d.total_batch_size is None),
        "data.batch_size / data.total_batch_size: give exactly one (set the other to null)",
    )
    _check(d.batch_size is None or d.batch_size >= 1, "data.batch_size: must be at least 1")
    _check(
        d.total_batch_size is None or d.total_batch_size >= 1,
        "data.total_batch_size: must be at least 1",
    )
    _check(d.num_workers >= 0, "data.num_workers: must be >= 0")
    _check(o.name in OPTIMIZERS, f"optim.name: one of {', '.join(OPTIMIZERS)}, got {o.name!r}")
    _check(o.lr > 0, f"optim.lr: must be positive, got {o.lr}")
    _check(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas: two numbers in [0, 1)"
    )
    _check(o.weight_decay >= 0, "optim.weight_decay: must be >= 0")
    _check(o.warmup_steps >= 0, "optim.warmup_steps: must be >= 0")
    _check(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip: positive or null")
    _check(o.grad_accumulation >= 1, "optim.grad_accumulation: must be at least 1")
    _check(r.max_steps >= 1, "run.max_steps: must be at least 1")
    _check(r.mixed_precision in PRECISIONS, f"run.mixed_precision: one of {', '.join(PRECISIONS)}")
    _check(r.ema_decay is None or 0 < r.ema_decay < 1, "run.ema_decay: in (0, 1) or null")
    for name in ("log_every", "save_every"):
        _check(getattr(r, name) >= 0, f"run.{name}: must be >= 0 (0 = never)")
    _check(r.keep_last >= 1, "run.keep_last: must be at least 1")
    _check(v.every >= 0, "val.every: must be >= 0 (0 = never)")
    _check(v.num_images >= 1 and v.steps >= 1, "val.num_images and val.steps: at least 1")
    m = cfg.model
    if isinstance(m, Stage1ModelConfig):
        from diffbir.models.cleaner import ARCHITECTURES

        _check(
            m.arch in ARCHITECTURES,
            f"model.arch: one of {', '.join(sorted(ARCHITECTURES))}, got {m.arch!r}",
        )
        _check(
            m.loss_reduction in ("mean", "sum"),
            f"model.loss_reduction: mean or sum, got {m.loss_reduction!r}",
        )
    else:
        _check(m.prediction in ("eps", "v"), f"model.prediction: eps or v, got {m.prediction!r}")
        _check(m.schedule in ("sd", "zsnr"), f"model.schedule: sd or zsnr, got {m.schedule!r}")
        _check(0 <= m.cond_noise_max_t <= 1000, "model.cond_noise_max_t: in [0, 1000]")
        _check(
            m.clean_latent in ("sample", "mode"),
            f"model.clean_latent: sample or mode, got {m.clean_latent!r}",
        )
        _check(
            m.latent_scale == LATENT_SCALE,
            f"model.latent_scale: {LATENT_SCALE} (the SD 2.1 VAE's; restore decodes with it), "
            f"got {m.latent_scale}",
        )


def per_process_batch(data: DataConfig, num_processes: int, grad_accumulation: int = 1) -> int:
    """The batch of one process: ``data.batch_size``, or ``data.total_batch_size`` split.

    A total that does not divide by ``num_processes x grad_accumulation`` is refused with a
    one-line :class:`ConfigError` (accelerate's ``split_batches`` refuses it too).
    """
    if data.total_batch_size is None:
        return int(data.batch_size)
    parts = num_processes * grad_accumulation
    if data.total_batch_size % parts:
        raise ConfigError(
            f"data.total_batch_size: {data.total_batch_size} does not split over "
            f"{num_processes} process(es) x {grad_accumulation} accumulation step(s); "
            f"use a multiple of {parts}, or set data.batch_size per process instead"
        )
    return data.total_batch_size // parts


def config_from_dict(data: Mapping, stage: str, *, origin: str = "config") -> TrainConfig:
    """Validate ``data`` (the parsed YAML) as a ``stage`` ("stage1" | "stage2") config."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    data = dict(data)
    declared = data.pop("stage", stage)
    if declared != stage:
        raise ConfigError(f"{origin}: a {declared} config, but training {stage}")
    sections = {"data": DataConfig, "optim": OptimConfig, "run": RunConfig, "val": ValConfig}
    sections["model"] = Stage1ModelConfig if stage == "stage1" else Stage2ModelConfig
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown section; a config has {', '.join(['stage', *sections])}"
        )
    built = {name: _build(cls, data.get(name), name) for name, cls in sections.items()}
    cfg = TrainConfig(stage=stage, **built)
    _validate_values(cfg)
    return cfg


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=2e-4", "run.max_steps=10"]`` -> pairs with YAML-parsed values."""
    import yaml

    pairs = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=2e-4")
        pairs.append((key.strip(), yaml.safe_load(text)))
    return pairs


def read_yaml(path: str | os.PathLike[str]) -> dict:
    """A YAML file as a dict; a missing file or bad YAML is a one-line ConfigError."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return data or {}


def preset_names() -> list[str]:
    """Configs shipped with the package (``diffbir train stage1 --config stage1_swinir``)."""
    folder = resources.files("diffbir.training") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict:
    """The parsed YAML of a shipped config."""
    import yaml

    entry = resources.files("diffbir.training") / "presets" / f"{name}.yaml"
    if not entry.is_file():
        raise ConfigError(f"no shipped config {name!r}; shipped: {', '.join(preset_names())}")
    return yaml.safe_load(entry.read_text(encoding="utf-8")) or {}


def load_config(
    source: str | os.PathLike[str] | Mapping,
    stage: str,
    overrides: list[tuple[str, Any]] | None = None,
) -> TrainConfig:
    """Load a config: a YAML path, a shipped preset name, or a mapping; then apply overrides."""
    if isinstance(source, Mapping):
        data, origin = dict(source), "config"
    elif Path(source).suffix in (".yaml", ".yml") or Path(source).exists():
        data, origin = read_yaml(source), str(source)
    else:
        data, origin = read_preset(str(source)), str(source)
    data = _deep_copy(data)
    for key, value in overrides or []:
        _set_dotted(data, key, value)
    return config_from_dict(data, stage, origin=origin)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
