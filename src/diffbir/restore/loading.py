"""Loading helpers of the pipeline: model-config files, dtypes, the stage-1 model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

from diffbir.config.precision import resolve_dtype
from diffbir.errors import ConfigError
from diffbir.models.cleaner import infer_arch, load_cleaner
from diffbir.weights.checkpoint import load_state_dict

MODEL_CONFIG_KEYS = ("cleaner", "unet", "vae", "text", "controlnet")
CLEANER_ARCHS = ("swinir", "rrdbnet", "scunet")


def load_stage1(path: Path, arch: str | None, configs: Mapping) -> torch.nn.Module:
    """Load the cleaner; a ``cleaner`` config section may be keyed by architecture."""
    config = dict(configs.get("cleaner", {}))
    if config and set(config) <= set(CLEANER_ARCHS):
        weights = load_state_dict(path)
        arch = arch or infer_arch(weights)
        return load_cleaner(weights, arch=arch, **config.get(arch, {}))
    return load_cleaner(path, arch=arch, **config)


def load_model_config(source: Mapping | str | Path | None) -> dict:
    """Architecture overrides from a mapping or a YAML/JSON file (see :meth:`from_preset`)."""
    if source is None:
        return {}
    if not isinstance(source, Mapping):
        path = Path(source)
        try:
            source = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the model config ({exc})") from None
        if not isinstance(source, Mapping):
            raise ConfigError(f"{path}: the model config must be a mapping")
    unknown = sorted(set(source) - set(MODEL_CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown model config section(s) {', '.join(unknown)}; "
            f"expected {', '.join(MODEL_CONFIG_KEYS)}"
        )
    for key, value in source.items():
        if not isinstance(value, Mapping):
            raise ConfigError(f"model config section {key!r} must be a mapping")
    return {key: dict(value) for key, value in source.items()}


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(
    dtype: torch.dtype | str | None, device: torch.device, model: str = "diffbir"
) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16" | "auto"`` (or a torch dtype) -> torch dtype; ``None``:
    the release's default on ``device`` (:func:`diffbir.config.precision.resolve_dtype`)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return _DTYPES[resolve_dtype(dtype, device.type, model)[0]]


def cleaner_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The stage-1 cleaner's dtype in a run of ``dtype`` on ``device``: bf16 in a CPU bf16
    run (the cleaner then uses the same bf16 units as the rest, 0.6 of its float32
    time), float32 everywhere else, as the release keeps it (also under fp16 on GPUs)."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16 -> "bf16"``: how ``--dtype`` and the run's settings spell it."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ConfigError(f"unsupported dtype {dtype}; choose fp32, fp16 or bf16")
