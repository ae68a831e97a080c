"""The Stable Diffusion UNet on diffusers, and the LDM <-> diffusers key mapping.

Released checkpoints store the UNet in the LDM layout (``input_blocks.N.M``,
``middle_block``, ``output_blocks``, ``out``); diffusers names the same
modules ``down_blocks``/``mid_block``/``up_blocks``. The mapping is computed
from the config (number of levels, layers per level, which levels have
attention), so it holds for the tiny test configs and the full SD 2.1 alike,
and it is a bijection: one table serves both directions.

Control residuals: the published ControlledUnetModel adds residual ``i`` to
the ``i``-th skip connection (one per LDM input block) and the last residual
to the middle block's output. diffusers' ``down_block_additional_residuals``
/ ``mid_block_additional_residual`` do exactly that, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from diffbir.errors import ConfigError
from diffbir.models.cpu_fast import accelerate

# The published constructor arguments of SD 2.1-base (v2-inference.yaml).
SD21_BASE_UNET_LDM: dict = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 1024,
    "legacy": False,
}

# Arguments that change nothing in inference (or only repeat the defaults).
_IGNORED_LDM_ARGS = frozenset(
    {
        "use_checkpoint",
        "image_size",
        "use_fp16",
        "dropout",
        "conv_resample",
        "dims",
        "use_scale_shift_norm",
        "resblock_updown",
        "use_new_attention_order",
        "num_heads_upsample",
        "legacy",
        "use_spatial_transformer",
        "hint_channels",
        "num_classes",
        "n_embed",
        "disable_self_attentions",
        "num_attention_blocks",
        "disable_middle_self_attn",
        "transformer_depth_middle",
    }
)

# LDM ResBlock submodule names -> diffusers ResnetBlock2D names.
_RESNET_RENAMES: tuple[tuple[str, str], ...] = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
)


def _check_supported(cfg: Mapping) -> None:
    if cfg.get("use_spatial_transformer", True) is not True:
        raise ConfigError("UNet config: only use_spatial_transformer=True (SD layout) is supported")
    if cfg.get("use_scale_shift_norm", False) or cfg.get("resblock_updown", False):
        raise ConfigError("UNet config: use_scale_shift_norm / resblock_updown are not supported")
    if cfg.get("num_classes") is not None:
        raise ConfigError("UNet config: class-conditional UNets (num_classes) are not supported")
    if cfg.get("disable_self_attentions") or cfg.get("num_attention_blocks"):
        raise ConfigError("UNet config: disable_self_attentions/num_attention_blocks unsupported")
    if not isinstance(cfg["num_res_blocks"], int):
        raise ConfigError("UNet config: num_res_blocks must be one integer for every level")
    unknown = set(cfg) - set(SD21_BASE_UNET_LDM) - _IGNORED_LDM_ARGS - {"num_heads"}
    if unknown:
        raise ConfigError(f"UNet config: unknown argument(s) {sorted(unknown)}")


def heads_per_level(cfg: Mapping) -> list[int]:
    """Number of attention heads at each level, from the published arguments.

    ``num_head_channels`` (SD 2.x) fixes the width of a head; ``num_heads``
    (SD 1.x, with ``num_head_channels=-1``) fixes their count.
    """
    channels = [cfg["model_channels"] * m for m in cfg["channel_mult"]]
    head_channels = cfg.get("num_head_channels", -1)
    if head_channels not in (None, -1):
        bad = [c for c in channels if c % head_channels]
        if bad:
            raise ConfigError(f"UNet config: widths {bad} not divisible by num_head_channels")
        return [c // head_channels for c in channels]
    num_heads = cfg.get("num_heads", -1)
    if num_heads in (None, -1):
        raise ConfigError("UNet config: give num_head_channels or num_heads")
    return [num_heads] * len(channels)


def encoder_config_from_ldm(config: Mapping | None = None) -> dict:
    """The diffusers arguments shared by the UNet and the ControlNet encoder."""
    cfg = {**SD21_BASE_UNET_LDM, **(config or {})}
    if config is not None and "num_heads" in config and "num_head_channels" not in config:
        cfg["num_head_channels"] = -1
    _check_supported(cfg)
    levels = len(cfg["channel_mult"])
    # attention_resolutions lists downsampling factors; level L runs at factor 2**L.
    attn = [2**level in set(cfg["attention_resolutions"]) for level in range(levels)]
    depth = cfg["transformer_depth"]
    depth = list(depth) if isinstance(depth, Sequence) else [int(depth)] * levels
    return {
        "in_channels": cfg["in_channels"],
        "block_out_channels": [cfg["model_channels"] * m for m in cfg["channel_mult"]],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "layers_per_block": cfg["num_res_blocks"],
        # diffusers' "attention_head_dim" is historically the number of heads.
        "attention_head_dim": heads_per_level(cfg),
        "cross_attention_dim": cfg["context_dim"],
        "transformer_layers_per_block": depth,
        "use_linear_projection": bool(cfg["use_linear_in_transformer"]),
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
    }


def unet_config_from_ldm(config: Mapping | None = None) -> dict:
    """Map the published UNetModel arguments to a diffusers ``UNet2DConditionModel`` config.

    ``config`` holds the names of the LDM yaml (``model_channels``,
    ``channel_mult``, ``attention_resolutions``, ``num_res_blocks``,
    ``num_head_channels`` or ``num_heads``, ``transformer_depth``,
    ``context_dim``, ``use_linear_in_transformer``, ``in_channels``,
    ``out_channels``); missing ones default to SD 2.1-base.
    """
    enc = encoder_config_from_ldm(config)
    cfg = {**SD21_BASE_UNET_LDM, **(config or {})}
    up_types = [
        "CrossAttnUpBlock2D" if t.startswith("CrossAttn") else "UpBlock2D"
        for t in reversed(enc["down_block_types"])
    ]
    return {
        **enc,
        "sample_size": 64,
        "out_channels": cfg["out_channels"],
        "up_block_types": up_types,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "act_fn": "silu",
        "center_input_sample": False,
        "upcast_attention": False,
    }


def build_unet(config: Mapping | None = None):
    """A ``UNet2DConditionModel`` from a diffusers config (default: SD 2.1-base), random weights.

    Build it inside ``torch.device("meta")`` to allocate nothing before loading.
    It carries the CPU fast paths of :func:`diffbir.models.cpu_fast.accelerate`.
    """
    # diffusers loads with the first model built (seconds a bare import need not pay)
    from diffusers import UNet2DConditionModel

    return accelerate(UNet2DConditionModel(**dict(config or unet_config_from_ldm())))


def _levels(config: Mapping) -> tuple[int, int, list[bool]]:
    attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ConfigError("UNet config: layers_per_block must be one integer")
    return len(attn), layers, attn


def encoder_module_pairs(config: Mapping) -> list[tuple[str, str, bool]]:
    """(LDM prefix, diffusers prefix, is_resnet) for the time embedding, input blocks and middle.

    ``config`` is a diffusers config with ``down_block_types`` and
    ``layers_per_block``. Input block ``i`` is the ``i``-th skip connection.
    """
    levels, layers, attn = _levels(config)
    pairs = [
        ("time_embed.0.", "time_embedding.linear_1.", False),
        ("time_embed.2.", "time_embedding.linear_2.", False),
        ("input_blocks.0.0.", "conv_in.", False),
    ]
    block = 1
    for level in range(levels):
        for j in range(layers):
            pairs.append((f"input_blocks.{block}.0.", f"down_blocks.{level}.resnets.{j}.", True))
            if attn[level]:
                pairs.append(
                    (f"input_blocks.{block}.1.", f"down_blocks.{level}.attentions.{j}.", False)
                )
            block += 1
        if level < levels - 1:
            pairs.append(
                (f"input_blocks.{block}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.", False)
            )
            block += 1
    pairs += [
        ("middle_block.0.", "mid_block.resnets.0.", True),
        ("middle_block.1.", "mid_block.attentions.0.", False),
        ("middle_block.2.", "mid_block.resnets.1.", True),
    ]
    return pairs


def num_skip_connections(config: Mapping) -> int:
    """Number of LDM input blocks (= skip connections): 12 for SD, without the middle block."""
    levels, layers, _ = _levels(config)
    return 1 + levels * layers + (levels - 1)


def unet_module_pairs(config: Mapping) -> list[tuple[str, str, bool]]:
    """(LDM prefix, diffusers prefix, is_resnet) for every module of the UNet."""
    levels, layers, attn = _levels(config)
    pairs = encoder_module_pairs(config)
    block = 0
    for up in range(levels):
        level = levels - 1 - up
        for j in range(layers + 1):
            pairs.append((f"output_blocks.{block}.0.", f"up_blocks.{up}.resnets.{j}.", True))
            if attn[level]:
                pairs.append(
                    (f"output_blocks.{block}.1.", f"up_blocks.{up}.attentions.{j}.", False)
                )
            if j == layers and up < levels - 1:
                index = 2 if attn[level] else 1
                pairs.append(
                    (
                        f"output_blocks.{block}.{index}.conv.",
                        f"up_blocks.{up}.upsamplers.0.conv.",
                        False,
                    )
                )
            block += 1
    pairs += [("out.0.", "conv_norm_out.", False), ("out.2.", "conv_out.", False)]
    return pairs


def rename_by_prefix(
    state_dict: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str, bool]],
    *,
    reverse: bool = False,
) -> dict[str, torch.Tensor]:
    """Rename keys by module prefix; keys matching no prefix keep their name.

    Unmatched keys are kept so that the strict load that follows reports
    them as unexpected, under the name the user's file has.
    """
    src = 1 if reverse else 0
    table = {p[src]: (p[1 - src], p[2]) for p in pairs}
    renames = [(b, a) for a, b in _RESNET_RENAMES] if reverse else list(_RESNET_RENAMES)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        new_key = key
        # Longest prefix first: "input_blocks.3.0.op." before "input_blocks.3.0.".
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut]) + "."
            hit = table.get(prefix)
            if hit is None:
                continue
            target, is_resnet = hit
            rest = key[len(prefix) :]
            if is_resnet:
                rest = next(
                    (new + rest[len(old) :] for old, new in renames if rest.startswith(old)), rest
                )
            new_key = target + rest
            break
        out[new_key] = value
    return out


def convert_unet_state_dict(
    ldm_state_dict: Mapping[str, torch.Tensor], config: Mapping | None = None
) -> dict[str, torch.Tensor]:
    """LDM UNet keys (``model.diffusion_model.`` already stripped) -> diffusers keys.

    ``config`` is the diffusers UNet config (default SD 2.1-base). Tensors are
    not copied.
    """
    return rename_by_prefix(ldm_state_dict, unet_module_pairs(config or unet_config_from_ldm()))


def unet_state_dict_to_ldm(
    state_dict: Mapping[str, torch.Tensor], config: Mapping | None = None
) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> LDM keys (without ``model.diffusion_model.``); inverse of the above."""
    pairs = unet_module_pairs(config or unet_config_from_ldm())
    return rename_by_prefix(state_dict, pairs, reverse=True)


def unet_forward(
    unet,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    residuals: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the UNet, adding control residuals (skips in order, the last to the middle block)."""
    if residuals is None:
        return unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    residuals = list(residuals)
    return unet(
        x,
        t,
        encoder_hidden_states=context,
        down_block_additional_residuals=tuple(residuals[:-1]),
        mid_block_additional_residual=residuals[-1],
        return_dict=False,
    )[0]
