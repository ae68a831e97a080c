"""Split and recognise the published checkpoint layouts.

An LDM checkpoint holds several models under key prefixes; DiffBIR's 2023
"full" checkpoints add the ControlNet, a copy of the VAE encoder and the
stage-1 model. :func:`split_ldm_checkpoint` cuts such a state dict into one
mapping per model (prefixes stripped) and drops everything else (EMA copies,
schedule buffers). The per-model key renames live next to each model
(``diffbir.models.sd_unet``, ``.controlnet``, ``.vae``, ``.text_encoder``).
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch

# Prefix in the released file -> part name.
LDM_PREFIXES: dict[str, str] = {
    "model.diffusion_model.": "unet",
    "first_stage_model.": "vae",
    "cond_stage_model.": "text",
    "control_model.": "controlnet",
    "cond_encoder.": "cond_encoder",
    "preprocess_model.": "cleaner",
}

# Name of the JSON file that marks a folder saved by Stage2Model.save_pretrained.
STAGE2_MARKER = "diffbir_stage2.json"


def split_ldm_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, dict[str, torch.Tensor]]:
    """Cut an LDM/DiffBIR state dict into ``{"unet", "vae", "text", "controlnet", ...}``.

    Only parts present in the file appear in the result; each has its prefix
    stripped. Keys under no known prefix (``model_ema.*``, ``betas``,
    ``alphas_cumprod``, ...) are ignored. Tensors are not copied.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        for prefix, part in LDM_PREFIXES.items():
            if key.startswith(prefix):
                parts.setdefault(part, {})[key[len(prefix) :]] = value
                break
    return parts


def is_ldm_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when the state dict holds an LDM UNet (``model.diffusion_model.`` keys)."""
    return any(k.startswith("model.diffusion_model.") for k in state_dict)


def is_controlnet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a bare released ControlNet (``zero_convs.*`` and ``middle_block_out.*`` at top level)."""
    keys = state_dict.keys()
    return any(k.startswith("zero_convs.") for k in keys) and any(
        k.startswith("middle_block_out.") for k in keys
    )


def is_stage2_folder(path: str | PathLike) -> bool:
    """True for a folder written by ``Stage2Model.save_pretrained``."""
    return (Path(path) / STAGE2_MARKER).is_file()


def is_diffusers_folder(path: str | PathLike) -> bool:
    """True for a folder written by a diffusers/transformers ``save_pretrained`` (has config.json)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()
