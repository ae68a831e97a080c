"""Loading helpers of the pipeline: model-config files, dtypes, the stage-1 model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

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


def parse_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` (or a torch dtype) -> torch dtype; default by device."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}; choose fp32, fp16 or bf16")
    return table[dtype]
