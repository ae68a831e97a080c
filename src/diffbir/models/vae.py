"""The KL-f8 autoencoder of Stable Diffusion, as a diffusers ``AutoencoderKL``.

Released checkpoints store it in the LDM layout (``first_stage_model.`` keys:
``encoder.down.0.block.0...``, attention as 1x1 convs). This module builds the
diffusers model from the LDM constructor arguments, converts weights both
ways, and wraps the two conversions the pipeline needs: an image in [0,1] to a
scaled latent, and back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from diffbir.errors import ConfigError
from diffbir.models.cpu_fast import accelerate
from diffbir.models.vae_cpu import decode, encode_moments

# Latents are multiplied by this after encoding so they have roughly unit variance.
VAE_SCALE = 0.18215

# SD 2.1-base first-stage constructor arguments (LDM names).
SD21_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}

# Sub-module renames inside a resnet block and the mid attention block.
_RESNET_LDM_TO_HF = {"nin_shortcut": "conv_shortcut"}
_RESNET_HF_TO_LDM = {v: k for k, v in _RESNET_LDM_TO_HF.items()}
_ATTN_LDM_TO_HF = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}
_ATTN_HF_TO_LDM = {v: k for k, v in _ATTN_LDM_TO_HF.items()}
# Attention projections whose weights are 1x1 convs in LDM and linears in diffusers.
_ATTN_PROJ_LDM = {"q", "k", "v", "proj_out"}


def vae_config_from_ldm(ddconfig: dict | None = None, embed_dim: int = 4) -> dict:
    """Return diffusers ``AutoencoderKL`` kwargs for LDM's ``AutoencoderKL(ddconfig, embed_dim)``.

    ``ddconfig`` uses the published names (``ch``, ``ch_mult``, ``num_res_blocks``,
    ``z_channels``, ...); missing entries take SD 2.1-base's values, so ``None``
    gives SD 2.1-base's VAE. Raises :class:`ConfigError` for layouts diffusers
    cannot express (attention outside the middle block, a single-moment latent,
    ``embed_dim != z_channels``).
    """
    dd = {**SD21_DDCONFIG, **(ddconfig or {})}
    if list(dd["attn_resolutions"]):
        raise ConfigError(
            "VAE config: attention at resolutions "
            f"{list(dd['attn_resolutions'])} is not supported (only the middle block's)"
        )
    if not dd["double_z"]:
        raise ConfigError("VAE config: double_z must be true for a KL autoencoder")
    if int(embed_dim) != int(dd["z_channels"]):
        raise ConfigError(
            f"VAE config: embed_dim ({embed_dim}) must equal z_channels ({dd['z_channels']})"
        )
    ch, ch_mult = int(dd["ch"]), [int(m) for m in dd["ch_mult"]]
    if ch % 32:
        raise ConfigError(f"VAE config: ch ({ch}) must be a multiple of 32 (GroupNorm groups)")
    levels = len(ch_mult)
    # dropout is only active in training and the VAE is always frozen here.
    return {
        "in_channels": int(dd["in_channels"]),
        "out_channels": int(dd["out_ch"]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [ch * m for m in ch_mult],
        "layers_per_block": int(dd["num_res_blocks"]),
        "act_fn": "silu",
        "latent_channels": int(embed_dim),
        "norm_num_groups": 32,
        "sample_size": int(dd["resolution"]),
        "scaling_factor": VAE_SCALE,
    }


def build_vae(config: dict | None = None):
    """Build a randomly initialised diffusers ``AutoencoderKL``.

    ``config`` is a dict from :func:`vae_config_from_ldm` (default: SD 2.1-base).
    Honors an enclosing ``torch.device("meta")`` context, so the full-size model
    can be built without allocating weights. It carries the CPU fast paths of
    :func:`diffbir.models.cpu_fast.accelerate`.
    """
    # diffusers loads with the first model built (seconds a bare import need not pay)
    from diffusers import AutoencoderKL

    return accelerate(AutoencoderKL(**(config if config is not None else vae_config_from_ldm())))


def _num_levels(keys, pattern: str) -> int | None:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else None


def convert_vae_state_dict(
    ldm: Mapping[str, torch.Tensor], *, num_levels: int | None = None
) -> dict[str, torch.Tensor]:
    """Convert LDM-layout VAE weights (``first_stage_model.`` stripped) to diffusers names.

    Decoder levels are numbered in reverse in diffusers, so their count is read
    from the ``decoder.up.N`` keys unless ``num_levels`` is given. The 1x1-conv
    attention weights become linear weights. Keys that match no rule are kept
    as they are, so a strict load reports them as unexpected.
    """
    levels = num_levels or _num_levels(ldm, r"decoder\.up\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in ldm.items():
        new = _ldm_key_to_hf(key, levels)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", key) and tensor.ndim == 4:
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        out[new] = tensor
    return out


def vae_state_dict_to_ldm(
    ours: Mapping[str, torch.Tensor], *, num_levels: int | None = None
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_vae_state_dict`: diffusers names back to the LDM layout."""
    levels = num_levels or _num_levels(ours, r"decoder\.up_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in ours.items():
        new = _hf_key_to_ldm(key, levels)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", new) and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[new] = tensor
    return out


def _ldm_key_to_hf(key: str, levels: int | None) -> str:
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key):
        i, j, part, p = m.groups()
        return f"encoder.down_blocks.{i}.resnets.{j}.{_RESNET_LDM_TO_HF.get(part, part)}.{p}"
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key):
        return f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key):
        i, j, part, p = m.groups()
        k = levels - 1 - int(i)
        return f"decoder.up_blocks.{k}.resnets.{j}.{_RESNET_LDM_TO_HF.get(part, part)}.{p}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key):
        k = levels - 1 - int(m.group(1))
        return f"decoder.up_blocks.{k}.upsamplers.0.conv.{m.group(2)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)", key):
        side, n, part, p = m.groups()
        part = _RESNET_LDM_TO_HF.get(part, part)
        return f"{side}.mid_block.resnets.{int(n) - 1}.{part}.{p}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)", key):
        side, part, p = m.groups()
        if part in _ATTN_LDM_TO_HF:
            return f"{side}.mid_block.attentions.0.{_ATTN_LDM_TO_HF[part]}.{p}"
    if m := re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", key):
        return f"{m.group(1)}.conv_norm_out.{m.group(2)}"
    return key


def _hf_key_to_ldm(key: str, levels: int | None) -> str:
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key):
        i, j, part, p = m.groups()
        return f"encoder.down.{i}.block.{j}.{_RESNET_HF_TO_LDM.get(part, part)}.{p}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key):
        k, j, part, p = m.groups()
        i = levels - 1 - int(k)
        return f"decoder.up.{i}.block.{j}.{_RESNET_HF_TO_LDM.get(part, part)}.{p}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
        i = levels - 1 - int(m.group(1))
        return f"decoder.up.{i}.upsample.conv.{m.group(2)}"
    if m := re.fullmatch(
        r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)", key
    ):
        side, n, part, p = m.groups()
        part = _RESNET_HF_TO_LDM.get(part, part)
        return f"{side}.mid.block_{int(n) + 1}.{part}.{p}"
    if m := re.fullmatch(
        r"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+(?:\.0)?)\.(weight|bias)", key
    ):
        side, part, p = m.groups()
        if part in _ATTN_HF_TO_LDM:
            return f"{side}.mid.attn_1.{_ATTN_HF_TO_LDM[part]}.{p}"
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key):
        return f"{m.group(1)}.norm_out.{m.group(2)}"
    return key


def first_parameter(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


def encode_to_latent(vae, x01: torch.Tensor) -> torch.Tensor:
    """Encode an NCHW RGB image in [0,1] to the scaled latent (posterior mode x 0.18215).

    The input is moved to the VAE's device and dtype; H and W should be
    multiples of 8 (the latent is 1/8 of the size).
    """
    ref = first_parameter(vae)
    x = x01.to(device=ref.device, dtype=ref.dtype) * 2.0 - 1.0
    moments = encode_moments(vae, x)  # the CPU fast path, None where it does not apply
    if moments is not None:
        return moments[:, : moments.shape[1] // 2] * VAE_SCALE
    posterior = vae.encode(x).latent_dist
    # The mode of a diagonal Gaussian is its mean: restoration wants no sampling noise.
    return posterior.mean * VAE_SCALE


def decode_from_latent(vae, z: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    """Decode a scaled latent to an NCHW RGB image ``(x + 1) / 2``, clamped to [0,1]
    unless ``clamp`` is False (the release's restore path does not clamp here)."""
    ref = first_parameter(vae)
    z = z.to(device=ref.device, dtype=ref.dtype) / VAE_SCALE
    out = decode(vae, z)  # the CPU fast path, None where it does not apply
    image = ((vae.decode(z).sample if out is None else out) + 1.0) / 2.0
    return image.clamp(0.0, 1.0) if clamp else image
