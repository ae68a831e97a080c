"""SCUNet (Swin-Conv-UNet): the denoising stage-1 model of DiffBIR's later releases.

A UNet whose blocks split the channels into a residual conv branch and a
(shifted) window-attention branch, then mix them with 1x1 convs. State-dict
names follow the published implementation (``m_head``, ``m_down1``...,
``trans_block.msa.embedding_layer``, ``relative_position_params``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffbir.errors import ConfigError
from diffbir.models.swinir import (
    DropPath,
    ShiftMaskCache,
    drop_path_rates,
    relative_position_index,
    window_merge,
    window_partition,
    windowed_attention,
)


class WMSA(nn.Module):
    """Window (``type="W"``) or shifted-window (``"SW"``) multi-head self-attention."""

    def __init__(
        self, input_dim: int, output_dim: int, head_dim: int, window_size: int, type: str
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.n_heads = input_dim // head_dim
        self.window_size = window_size
        self.type = type
        self.embedding_layer = nn.Linear(input_dim, 3 * input_dim, bias=True)
        span = 2 * window_size - 1
        # Stored as (heads, 2w-1, 2w-1), indexed by (dy, dx) of query minus key.
        self.relative_position_params = nn.Parameter(torch.zeros(self.n_heads, span, span))
        nn.init.trunc_normal_(self.relative_position_params, std=0.02)
        self.linear = nn.Linear(input_dim, output_dim)
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )

    def position_bias(self) -> torch.Tensor:
        """``(heads, N, N)`` relative position bias."""
        n = self.window_size**2
        flat = self.relative_position_params.reshape(self.n_heads, -1)
        return flat[:, self.relative_position_index.reshape(-1)].view(self.n_heads, n, n)

    def forward(self, x: torch.Tensor, masks: ShiftMaskCache) -> torch.Tensor:
        """``x``: ``(B, H, W, C)`` with H, W multiples of the window."""
        ws = self.window_size
        b, h, w, _ = x.shape
        shift = ws // 2 if self.type != "W" else 0
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = masks.get(h, w, ws, shift, value=float("-inf"), device=x.device, dtype=x.dtype)
        out = windowed_attention(
            self.embedding_layer(window_partition(x, ws)),
            self.n_heads,
            self.position_bias(),
            mask,
            scale=self.head_dim**-0.5,
        )
        out = window_merge(self.linear(out), ws, h, w)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out


class Block(nn.Module):
    """Transformer block on ``(B, H, W, C)``: LN, W-MSA, LN, MLP, with residuals."""

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        head_dim: int,
        window_size: int,
        drop_path: float,
        type: str = "W",
        input_resolution: int = 256,
    ) -> None:
        super().__init__()
        # As published: no shift when the configured resolution fits one window.
        if input_resolution <= window_size:
            type = "W"
        self.ln1 = nn.LayerNorm(input_dim)
        self.msa = WMSA(input_dim, input_dim, head_dim, window_size, type)
        self.drop_path = DropPath(drop_path)
        self.ln2 = nn.LayerNorm(input_dim)
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, 4 * input_dim), nn.GELU(), nn.Linear(4 * input_dim, output_dim)
        )

    def forward(self, x: torch.Tensor, masks: ShiftMaskCache) -> torch.Tensor:
        x = x + self.drop_path(self.msa(self.ln1(x), masks))
        return x + self.drop_path(self.mlp(self.ln2(x)))


class ConvTransBlock(nn.Module):
    """Split channels into a conv branch and a transformer branch; mix back with 1x1 convs."""

    def __init__(
        self,
        conv_dim: int,
        trans_dim: int,
        head_dim: int,
        window_size: int,
        drop_path: float,
        type: str = "W",
        input_resolution: int = 256,
    ) -> None:
        super().__init__()
        self.conv_dim = conv_dim
        self.trans_dim = trans_dim
        total = conv_dim + trans_dim
        self.trans_block = Block(
            trans_dim, trans_dim, head_dim, window_size, drop_path, type, input_resolution
        )
        self.conv1_1 = nn.Conv2d(total, total, 1, 1, 0, bias=True)
        self.conv1_2 = nn.Conv2d(total, total, 1, 1, 0, bias=True)
        self.conv_block = nn.Sequential(
            nn.Conv2d(conv_dim, conv_dim, 3, 1, 1, bias=False),
            nn.ReLU(True),
            nn.Conv2d(conv_dim, conv_dim, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor, masks: ShiftMaskCache) -> torch.Tensor:
        conv_x, trans_x = torch.split(self.conv1_1(x), (self.conv_dim, self.trans_dim), dim=1)
        conv_x = self.conv_block(conv_x) + conv_x
        trans_x = self.trans_block(trans_x.permute(0, 2, 3, 1), masks).permute(0, 3, 1, 2)
        return x + self.conv1_2(torch.cat((conv_x, trans_x), dim=1))


class SCUNet(nn.Module):
    """SCUNet denoiser: [0,1] RGB in, same-size denoised RGB out (not clamped).

    Arguments use the published names: ``config`` is the number of blocks in
    each of the 7 stages (down1, down2, down3, body, up3, up2, up1). The input
    is replicate-padded to a multiple of 64 and cropped back.
    """

    scale = 1

    def __init__(
        self,
        in_nc: int = 3,
        config: Sequence[int] = (4, 4, 4, 4, 4, 4, 4),
        dim: int = 64,
        drop_path_rate: float = 0.0,
        input_resolution: int = 256,
    ) -> None:
        super().__init__()
        if len(config) != 7:
            raise ConfigError(f"SCUNet: config needs 7 stage depths, got {list(config)}")
        head_dim, ws = 32, 8
        if dim % (2 * head_dim):
            # The narrowest stage has dim // 2 channels split into heads of 32.
            raise ConfigError(f"SCUNet: dim must be a multiple of 64, got {dim}")
        self.pad_multiple = 64
        self.gradient_checkpointing = False
        self.masks = ShiftMaskCache()
        rates = drop_path_rates(drop_path_rate, sum(config))
        offsets = [sum(config[:i]) for i in range(7)]

        def stage(i: int, width: int, res: int) -> list[nn.Module]:
            return [
                ConvTransBlock(
                    width,
                    width,
                    head_dim,
                    ws,
                    rates[offsets[i] + j],
                    "W" if j % 2 == 0 else "SW",
                    res,
                )
                for j in range(config[i])
            ]

        r = input_resolution
        self.m_head = nn.Sequential(nn.Conv2d(in_nc, dim, 3, 1, 1, bias=False))
        self.m_down1 = nn.Sequential(
            *stage(0, dim // 2, r), nn.Conv2d(dim, 2 * dim, 2, 2, 0, bias=False)
        )
        self.m_down2 = nn.Sequential(
            *stage(1, dim, r // 2), nn.Conv2d(2 * dim, 4 * dim, 2, 2, 0, bias=False)
        )
        self.m_down3 = nn.Sequential(
            *stage(2, 2 * dim, r // 4), nn.Conv2d(4 * dim, 8 * dim, 2, 2, 0, bias=False)
        )
        self.m_body = nn.Sequential(*stage(3, 4 * dim, r // 8))
        self.m_up3 = nn.Sequential(
            nn.ConvTranspose2d(8 * dim, 4 * dim, 2, 2, 0, bias=False), *stage(4, 2 * dim, r // 4)
        )
        self.m_up2 = nn.Sequential(
            nn.ConvTranspose2d(4 * dim, 2 * dim, 2, 2, 0, bias=False), *stage(5, dim, r // 2)
        )
        self.m_up1 = nn.Sequential(
            nn.ConvTranspose2d(2 * dim, dim, 2, 2, 0, bias=False), *stage(6, dim // 2, r)
        )
        self.m_tail = nn.Sequential(nn.Conv2d(dim, in_nc, 3, 1, 1, bias=False))

    def _run(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for layer in stage:
            if not isinstance(layer, ConvTransBlock):
                x = layer(x)
            elif self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, self.masks, use_reentrant=False)
            else:
                x = layer(x, self.masks)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        h, w = x.shape[-2:]
        x0 = F.pad(x, (0, -w % 64, 0, -h % 64), mode="replicate")
        x1 = self.m_head(x0)
        x2 = self._run(self.m_down1, x1)
        x3 = self._run(self.m_down2, x2)
        x4 = self._run(self.m_down3, x3)
        y = self._run(self.m_body, x4)
        y = self._run(self.m_up3, y + x4)
        y = self._run(self.m_up2, y + x3)
        y = self._run(self.m_up1, y + x2)
        y = self.m_tail(y + x1)
        return y[..., :h, :w]
