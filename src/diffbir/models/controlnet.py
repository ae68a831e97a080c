"""LAControlNet: a trainable copy of the UNet encoder and middle block.

It sees ``concat(z_t, c)`` (the noisy latent and the condition latent
``E(I_reg)``) and returns one residual per UNet skip connection plus one for
the middle block, each through a zero-initialised 1x1 convolution (13 at SD
size). Built from diffusers blocks with diffusers names, so the encoder part
shares its state-dict keys with ``UNet2DConditionModel`` and
:func:`from_unet` is a plain copy.

A convolution over ``concat(z_t, c)`` equals ``conv(z_t) + conv(c)``: we
keep one ``conv_in`` over ``in_channels + hint_channels`` channels, which is
the released layout (``input_blocks.0.0.weight`` [320, 8, 3, 3]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block
from torch import nn

from diffbir.errors import ConfigError
from diffbir.models.cpu_fast import accelerate
from diffbir.models.sd_unet import (
    encoder_config_from_ldm,
    encoder_module_pairs,
    num_skip_connections,
    rename_by_prefix,
)


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class LAControlNet(ModelMixin, ConfigMixin):
    """Latent-aligned ControlNet of DiffBIR (the encoder + middle of the SD UNet).

    ``forward(sample, hint, timestep, encoder_hidden_states)`` returns the
    raw residuals (before any control scale): one per skip connection of the
    UNet, in order, then the middle block's. Built with the CPU fast paths of
    :func:`diffbir.models.cpu_fast.accelerate`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        hint_channels: int = 4,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        down_block_types: Sequence[str] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        layers_per_block: int = 2,
        attention_head_dim: Sequence[int] = (5, 10, 20, 20),
        cross_attention_dim: int = 1024,
        transformer_layers_per_block: Sequence[int] = (1, 1, 1, 1),
        use_linear_projection: bool = True,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        downsample_padding: int = 1,
        upcast_attention: bool = False,
    ):
        super().__init__()
        # As in diffusers' UNet config, ``attention_head_dim`` is the number of heads per level.
        levels = len(block_out_channels)
        if not (len(down_block_types) == len(attention_head_dim) == levels):
            raise ConfigError("ControlNet config: one block type and head count per level")
        depth = list(transformer_layers_per_block)
        if len(depth) != levels:
            raise ConfigError("ControlNet config: one transformer depth per level")
        base = block_out_channels[0]
        time_dim = base * 4
        self.time_proj = Timesteps(base, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(base, time_dim, act_fn="silu")
        self.conv_in = nn.Conv2d(in_channels + hint_channels, base, kernel_size=3, padding=1)

        self.down_blocks = nn.ModuleList()
        zero_convs = [_zero_conv(base)]
        out_ch = base
        for level, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[level]
            last = level == levels - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers_per_block,
                    transformer_layers_per_block=depth[level],
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=time_dim,
                    add_downsample=not last,
                    resnet_eps=norm_eps,
                    resnet_act_fn="silu",
                    resnet_groups=norm_num_groups,
                    cross_attention_dim=cross_attention_dim,
                    num_attention_heads=attention_head_dim[level],
                    attention_head_dim=out_ch // attention_head_dim[level],
                    downsample_padding=downsample_padding,
                    use_linear_projection=use_linear_projection,
                    upcast_attention=upcast_attention,
                )
            )
            zero_convs += [_zero_conv(out_ch) for _ in range(layers_per_block + (not last))]
        self.controlnet_down_blocks = nn.ModuleList(zero_convs)
        mid_ch = block_out_channels[-1]
        self.mid_block = UNetMidBlock2DCrossAttn(
            in_channels=mid_ch,
            temb_channels=time_dim,
            transformer_layers_per_block=depth[-1],
            resnet_eps=norm_eps,
            resnet_act_fn="silu",
            resnet_groups=norm_num_groups,
            num_attention_heads=attention_head_dim[-1],
            cross_attention_dim=cross_attention_dim,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
        )
        self.controlnet_mid_block = _zero_conv(mid_ch)
        accelerate(self)

    @property
    def num_residuals(self) -> int:
        """How many residuals ``forward`` returns (13 at SD size)."""
        return len(self.controlnet_down_blocks) + 1

    def forward(
        self,
        sample: torch.Tensor,
        hint: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Residuals for the UNet from the noisy latent ``sample`` and the condition ``hint``."""
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t
        # Timesteps returns float32; the embedding MLP runs in the model's dtype.
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))

        h = self.conv_in(torch.cat([sample, hint.to(sample.dtype)], dim=1))
        skips = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, states = block(
                    hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states
                )
            else:
                h, states = block(hidden_states=h, temb=emb)
            skips.extend(states)
        h = self.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        outs = [conv(s) for conv, s in zip(self.controlnet_down_blocks, skips, strict=True)]
        outs.append(self.controlnet_mid_block(h))
        return outs


def controlnet_config_from_ldm(config: Mapping | None = None) -> dict:
    """Map the published ControlNet arguments (LDM names, plus ``hint_channels``) to ours.

    Defaults to the SD 2.1-base ControlNet of DiffBIR (``hint_channels`` 4).
    """
    cfg = dict(config or {})
    hint = int(cfg.pop("hint_channels", 4))
    enc = encoder_config_from_ldm(cfg)
    return {**enc, "hint_channels": hint, "upcast_attention": False}


def controlnet_config_from_unet(unet_config: Mapping, hint_channels: int = 4) -> dict:
    """Our ControlNet config mirroring a diffusers UNet config."""
    keys = (
        "in_channels",
        "block_out_channels",
        "down_block_types",
        "layers_per_block",
        "attention_head_dim",
        "cross_attention_dim",
        "transformer_layers_per_block",
        "use_linear_projection",
        "norm_num_groups",
        "norm_eps",
        "flip_sin_to_cos",
        "freq_shift",
        "downsample_padding",
        "upcast_attention",
    )
    cfg = {k: unet_config[k] for k in keys}
    levels = len(cfg["block_out_channels"])
    for name in ("attention_head_dim", "transformer_layers_per_block"):
        value = cfg[name]
        cfg[name] = [value] * levels if isinstance(value, int) else list(value)
    return {**cfg, "hint_channels": hint_channels}


def build_controlnet(config: Mapping | None = None) -> LAControlNet:
    """An :class:`LAControlNet` from our config (default: SD 2.1-base), zero residual convs."""
    return LAControlNet(**dict(config or controlnet_config_from_ldm()))


def _controlnet_pairs(config: Mapping) -> list[tuple[str, str, bool]]:
    pairs = encoder_module_pairs(config)
    pairs += [
        (f"zero_convs.{i}.0.", f"controlnet_down_blocks.{i}.", False)
        for i in range(num_skip_connections(config))
    ]
    pairs.append(("middle_block_out.0.", "controlnet_mid_block.", False))
    return pairs


def convert_controlnet_state_dict(
    released: Mapping[str, torch.Tensor], config: Mapping | None = None
) -> dict[str, torch.Tensor]:
    """Released DiffBIR ControlNet keys (``control_model.`` stripped) -> our keys."""
    return rename_by_prefix(released, _controlnet_pairs(config or controlnet_config_from_ldm()))


def controlnet_state_dict_to_ldm(
    state_dict: Mapping[str, torch.Tensor], config: Mapping | None = None
) -> dict[str, torch.Tensor]:
    """Our ControlNet keys -> the released layout; inverse of the above."""
    pairs = _controlnet_pairs(config or controlnet_config_from_ldm())
    return rename_by_prefix(state_dict, pairs, reverse=True)


@torch.no_grad()
def init_from_unet(controlnet: LAControlNet, unet: nn.Module) -> LAControlNet:
    """Copy the UNet's encoder + middle weights into ``controlnet``; zero the hint channels.

    The residual convs are zeroed too, so the pair's output equals the UNet's
    alone: the starting point of stage-2 training.
    """
    unet_sd = unet.state_dict()
    for name, param in controlnet.state_dict().items():
        if name.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")):
            param.zero_()
        elif name == "conv_in.weight":
            source = unet_sd[name]
            param.zero_()
            param[:, : source.shape[1]].copy_(source)
        else:
            param.copy_(unet_sd[name])
    return controlnet


def from_unet(unet: nn.Module, hint_channels: int = 4) -> LAControlNet:
    """A new :class:`LAControlNet` initialised from a diffusers UNet (see :func:`init_from_unet`)."""
    config = controlnet_config_from_unet(unet.config, hint_channels)
    with torch.device(unet.device):
        controlnet = build_controlnet(config)
    if controlnet.dtype != unet.dtype:
        controlnet = controlnet.to(dtype=unet.dtype)
    return init_from_unet(controlnet, unet)
