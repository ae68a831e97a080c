"""The OpenCLIP ViT-H/14 text tower of SD 2.x, as a transformers ``CLIPTextModel``.

Stable Diffusion 2 conditions on the *penultimate* block's output passed
through ``ln_final``. A ``CLIPTextModel`` with one block fewer computes exactly
that as its ``last_hidden_state`` (transformers applies ``final_layer_norm``
there), so the last OpenCLIP block is dropped when converting. OpenCLIP attends
with a causal mask and no padding mask; ``CLIPTextModel`` builds the same
causal mask itself when called without ``attention_mask``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from diffbir.errors import CheckpointError, ConfigError

# OpenCLIP ViT-H-14 text_cfg (OpenCLIP names).
VIT_H_TEXT_CFG: dict[str, Any] = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 1024,
    "heads": 16,
    "layers": 24,
    "mlp_ratio": 4.0,
}

# Renames inside one transformer block, OpenCLIP -> transformers.
_BLOCK_OC_TO_HF = {
    "attn.out_proj": "self_attn.out_proj",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_BLOCK_HF_TO_OC = {v: k for k, v in _BLOCK_OC_TO_HF.items()}
# Weights of the joint text/image model that the text embedding never reads.
_UNUSED_OC = ("model.text_projection", "model.logit_scale")


def text_config_from_open_clip(
    text_cfg: dict | None = None,
    embed_dim: int = 1024,
    layer: str = "penultimate",
    *,
    quick_gelu: bool = False,
) -> dict:
    """Return ``CLIPTextConfig`` kwargs for an OpenCLIP text tower.

    ``text_cfg`` uses OpenCLIP's names (``width``, ``heads``, ``layers``,
    ``vocab_size``, ``context_length``, ``mlp_ratio``); missing entries take
    ViT-H/14's values. ``layer`` is ``"penultimate"`` (SD 2.x: one block fewer)
    or ``"last"``. ``quick_gelu`` selects OpenAI's sigmoid GELU approximation
    (ViT-H/14 uses the exact GELU).
    """
    cfg = {**VIT_H_TEXT_CFG, **(text_cfg or {})}
    if cfg.get("ls_init_value") is not None or cfg.get("hf_model_name"):
        raise ConfigError("text encoder config: layer scale / HF text towers are not supported")
    if layer == "penultimate":
        num_layers = int(cfg["layers"]) - 1
    elif layer == "last":
        num_layers = int(cfg["layers"])
    else:
        raise ConfigError(
            f"text encoder config: layer must be 'penultimate' or 'last', not {layer!r}"
        )
    if num_layers < 1:
        raise ConfigError(f"text encoder config: too few layers ({cfg['layers']}) for {layer!r}")
    width, vocab = int(cfg["width"]), int(cfg["vocab_size"])
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": int(width * float(cfg["mlp_ratio"])),
        "num_attention_heads": int(cfg["heads"]),
        "num_hidden_layers": num_layers,
        "max_position_embeddings": int(cfg["context_length"]),
        "hidden_act": "quick_gelu" if quick_gelu else "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": int(embed_dim),
        "pad_token_id": 0,
        "bos_token_id": 49406 if vocab > 49406 else None,
        # 2 selects transformers' legacy pooling (argmax of the ids), which is
        # exactly OpenCLIP's: its end-of-text token has the highest id.
        "eos_token_id": 2,
    }


def _as_config(config) -> Any:
    # transformers loads with the first model built (seconds a bare import need not pay)
    from transformers import CLIPTextConfig

    if config is None:
        config = text_config_from_open_clip()
    if isinstance(config, Mapping):
        config = CLIPTextConfig(**config)
    return config


def build_text_encoder(config: dict | None = None):
    """Build a randomly initialised ``transformers.CLIPTextModel``.

    ``config`` is a dict from :func:`text_config_from_open_clip` (default:
    ViT-H/14, penultimate layer) or a ``CLIPTextConfig``. Honors an enclosing
    ``torch.device("meta")`` context.
    """
    # transformers loads with the first model built (seconds a bare import need not pay)
    from transformers import CLIPTextModel

    return CLIPTextModel(_as_config(config))


def _hf_prefix() -> str:
    """``"text_model."`` where the installed transformers nests the tower (4.x), else ``""``."""
    # transformers loads with the first model built (seconds a bare import need not pay)
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = CLIPTextConfig(
        vocab_size=8,
        hidden_size=8,
        intermediate_size=8,
        num_attention_heads=1,
        num_hidden_layers=1,
        max_position_embeddings=4,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    with torch.device("meta"):
        keys = CLIPTextModel(tiny).state_dict().keys()
    return "text_model." if any(k.startswith("text_model.") for k in keys) else ""


def convert_text_state_dict(
    open_clip: Mapping[str, torch.Tensor],
    config: dict | None = None,
    *,
    target_keys: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Convert OpenCLIP text weights (``cond_stage_model.`` stripped) to ``CLIPTextModel`` names.

    Blocks beyond ``config["num_hidden_layers"]`` (the last one for the
    penultimate layer), ``text_projection`` and ``logit_scale`` are dropped;
    ``in_proj`` is split into q/k/v. Key names follow the installed
    transformers (``text_model.`` prefix in 4.x, none in 5.x) unless
    ``target_keys`` (a model's ``state_dict().keys()``) shows the prefix.
    Unknown keys are kept unchanged so a strict load reports them.
    """
    num_layers = int(_as_config(config).num_hidden_layers)
    if target_keys is not None:
        prefix = "text_model." if any(k.startswith("text_model.") for k in target_keys) else ""
    else:
        prefix = _hf_prefix()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in open_clip.items():
        if key in _UNUSED_OC:
            continue
        if m := re.fullmatch(r"model\.transformer\.resblocks\.(\d+)\.(.+)", key):
            n, rest = int(m.group(1)), m.group(2)
            if n >= num_layers:
                continue
            base = f"{prefix}encoder.layers.{n}."
            if pm := re.fullmatch(r"attn\.in_proj_(weight|bias)", rest):
                if tensor.shape[0] % 3:
                    raise CheckpointError(
                        f"{key}: first dimension {tensor.shape[0]} is not 3 x width"
                    )
                # OpenCLIP fuses the projections in q, k, v order.
                q, k, v = tensor.chunk(3, dim=0)
                p = pm.group(1)
                for name, part in (("q", q), ("k", k), ("v", v)):
                    out[f"{base}self_attn.{name}_proj.{p}"] = part
                continue
            if (pm := re.fullmatch(r"(.+)\.(weight|bias)", rest)) and pm.group(
                1
            ) in _BLOCK_OC_TO_HF:
                out[f"{base}{_BLOCK_OC_TO_HF[pm.group(1)]}.{pm.group(2)}"] = tensor
                continue
            out[key] = tensor
            continue
        out[_top_oc_to_hf(key, prefix)] = tensor
    return out


def _top_oc_to_hf(key: str, prefix: str) -> str:
    names = {
        "model.token_embedding.weight": "embeddings.token_embedding.weight",
        "model.positional_embedding": "embeddings.position_embedding.weight",
        "model.ln_final.weight": "final_layer_norm.weight",
        "model.ln_final.bias": "final_layer_norm.bias",
    }
    return prefix + names[key] if key in names else key


def text_state_dict_to_open_clip(ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_text_state_dict` (keys with or without ``text_model.``).

    The dropped weights (the last block when penultimate, ``text_projection``,
    ``logit_scale``) cannot be recovered and are absent from the result.
    """
    top = {
        "embeddings.token_embedding.weight": "model.token_embedding.weight",
        "embeddings.position_embedding.weight": "model.positional_embedding",
        "final_layer_norm.weight": "model.ln_final.weight",
        "final_layer_norm.bias": "model.ln_final.bias",
    }
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in ours.items():
        name = key.removeprefix("text_model.")
        if name in top:
            out[top[name]] = tensor
            continue
        if m := re.fullmatch(
            r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", name
        ):
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = tensor
            continue
        if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name):
            n, part, p = m.groups()
            if part in _BLOCK_HF_TO_OC:
                out[f"model.transformer.resblocks.{n}.{_BLOCK_HF_TO_OC[part]}.{p}"] = tensor
                continue
        out[name] = tensor
    for (n, p), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"text encoder layer {n}: q/k/v {p} incomplete ({sorted(parts)})")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"model.transformer.resblocks.{n}.attn.in_proj_{p}"] = fused
    return out


def encode_tokens(text_encoder, tokens: torch.Tensor) -> torch.Tensor:
    """Embed token ids ``[B, 77]`` to ``[B, 77, width]`` (causal attention, no padding mask).

    Ids are moved to the encoder's device; the output has its dtype.
    """
    device = next(text_encoder.parameters()).device
    # No attention_mask: CLIPTextModel then applies only its causal mask, as OpenCLIP does.
    return text_encoder(input_ids=tokens.to(device=device, dtype=torch.long)).last_hidden_state
