"""SwinIR as modified by DiffBIR: the stage-1 restoration module of the paper.

The image is pixel-unshuffled by 8 and run through residual Swin Transformer
blocks (RSTB) at 1/8 resolution, then brought back to full size by three
nearest-neighbour x2 upsamplings, each followed by a 3x3 conv and LeakyReLU.
Parameter and state-dict names follow the published implementation so the
released checkpoint loads directly.

Window attention uses ``scaled_dot_product_attention`` with the relative
position bias (and, in shifted blocks, the shifted-window mask) as an additive
``attn_mask``, always given as a 4-D tensor: on CPU a 3-D float mask sends
SDPA down its slow unfused path, a 4-D one to the fused kernel. The shift mask
depends on the feature size, so it is computed for the actual input and cached
per size, device and dtype. In no-grad float32 CPU inference the linear layers
run through oneDNN (:mod:`diffbir.models.cpu_fast`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffbir.errors import ConfigError
from diffbir.models.cpu_fast import linear

# Mean of the training images' RGB channels, subtracted before the network.
RGB_MEAN = (0.4488, 0.4371, 0.4040)
# Additive logit for disallowed pairs in shifted windows (the published value).
SWIN_MASK_VALUE = -100.0


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, window * window, C)``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window * window, C)`` -> ``(B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """``(N, N)`` index into a ``(2w-1)^2`` bias table for every query/key pair of a window."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack((ys.flatten(), xs.flatten()))  # 2, N
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # 2, N, N
    return rel[0] * (2 * window - 1) + rel[1]


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Bool ``(nW, N, N)``: True where a query and key come from different image regions.

    After a cyclic shift, windows on the bottom and right borders hold pixels
    from opposite sides of the image; attention between them is disallowed.
    """
    labels = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(cuts):
        for j, cols in enumerate(cuts):
            labels[:, rows, cols, :] = 3 * i + j
    regions = window_partition(labels, window).squeeze(-1)  # nW, N
    return regions[:, None, :] != regions[:, :, None]


class ShiftMaskCache:
    """Additive shift masks per (H, W, window, shift, value, device, dtype), built on demand.

    Kept by the model that owns the blocks (module state, not global); a few
    sizes at most are kept, the oldest dropped first.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._masks: dict[tuple, torch.Tensor] = {}

    def get(
        self,
        h: int,
        w: int,
        window: int,
        shift: int,
        *,
        value: float,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Float ``(nW, N, N)`` mask: 0 where attention is allowed, ``value`` elsewhere."""
        key = (h, w, window, shift, value, str(device), dtype)
        mask = self._masks.get(key)
        if mask is None:
            # A mask built inside inference_mode must still be usable when training.
            with torch.inference_mode(False), torch.no_grad():
                blocked = shifted_window_mask(h, w, window, shift)
                mask = torch.zeros(blocked.shape, dtype=dtype).masked_fill(blocked, value)
                mask = mask.to(device)
            if len(self._masks) >= self.max_entries:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = mask
        return mask


def windowed_attention(
    qkv: torch.Tensor,
    num_heads: int,
    bias: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Multi-head attention inside windows.

    ``qkv``: ``(B * nW, N, 3 * C)`` laid out as (q|k|v, head, channel);
    ``bias``: ``(heads, N, N)``; ``mask``: ``(nW, N, N)`` additive or None.
    Returns ``(B * nW, N, C)``.
    """
    bw, n, c3 = qkv.shape
    c = c3 // 3
    q, k, v = qkv.view(bw, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    bias = bias.to(q.dtype)
    if mask is not None:
        nw = mask.shape[0]
        full = bias.unsqueeze(0) + mask.unsqueeze(1)  # nW, heads, N, N
        bias = full.unsqueeze(0).expand(bw // nw, -1, -1, -1, -1).reshape(bw, num_heads, n, n)
    else:
        bias = bias.unsqueeze(0)  # 4-D: the fused CPU kernel (a 3-D mask is not fused)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2).reshape(bw, n, c)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


def drop_path_rates(top: float, n: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``top`` over ``n`` blocks.

    Plain Python so that building a model on the meta device works.
    """
    return [top * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


class Mlp(nn.Module):
    """Two linear layers with a GELU between (``fc1``/``fc2`` as published)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(linear(x, self.fc1.weight, self.fc1.bias)))
        return self.drop(linear(x, self.fc2.weight, self.fc2.bias))


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative position bias."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Derived from window_size; not saved (released files that carry it are stripped).
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def position_bias(self) -> torch.Tensor:
        """``(heads, N, N)`` bias looked up from the table."""
        n = self.window_size**2
        idx = self.relative_position_index.reshape(-1)
        return self.relative_position_bias_table[idx].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B * nW, N, C)``; ``mask``: additive ``(nW, N, N)`` or None."""
        out = windowed_attention(
            linear(x, self.qkv.weight, self.qkv.bias),
            self.num_heads,
            self.position_bias(),
            mask,
            scale=self.scale,
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        return self.proj_drop(linear(out, self.proj.weight, self.proj.bias))


class SwinTransformerBlock(nn.Module):
    """LayerNorm, (shifted) window attention, LayerNorm, MLP; both with residuals."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 8,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        # As published: a configured resolution no larger than the window means one
        # unshifted window of that size.
        if min(input_resolution) <= window_size:
            shift_size = 0
            window_size = min(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], masks: ShiftMaskCache
    ) -> torch.Tensor:
        """``x``: ``(B, H * W, C)`` tokens of an ``x_size`` feature map."""
        h, w = x_size
        b, length, c = x.shape
        ws, shift = self.window_size, self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        mask = None
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
            mask = masks.get(h, w, ws, shift, value=SWIN_MASK_VALUE, device=y.device, dtype=y.dtype)
        y = window_merge(self.attn(window_partition(y, ws), mask), ws, h, w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, length, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """A stack of Swin blocks alternating plain and shifted windows."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                input_resolution,
                num_heads,
                window_size,
                0 if i % 2 == 0 else window_size // 2,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop,
                attn_drop,
                drop_path[i],
            )
            for i in range(depth)
        )

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], masks: ShiftMaskCache
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, x_size, masks)
        return x


def _tokens_to_image(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, x_size[0], x_size[1])


def _image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers, a conv, and a skip around both."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        resi_connection: str = "1conv",
    ) -> None:
        super().__init__()
        self.residual_group = BasicLayer(
            dim,
            input_resolution,
            depth,
            num_heads,
            window_size,
            mlp_ratio,
            qkv_bias,
            qk_scale,
            drop,
            attn_drop,
            drop_path,
        )
        self.conv = _residual_conv(dim, resi_connection)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], masks: ShiftMaskCache
    ) -> torch.Tensor:
        y = self.residual_group(x, x_size, masks)
        return _image_to_tokens(self.conv(_tokens_to_image(y, x_size))) + x


def _residual_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        # The published parameter-saving variant.
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ConfigError(f"SwinIR resi_connection must be '1conv' or '3conv', got {kind!r}")


class PatchEmbed(nn.Module):
    """Feature map to tokens, with an optional LayerNorm (key ``patch_embed.norm``)."""

    def __init__(self, dim: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _image_to_tokens(x)
        return self.norm(x) if self.norm is not None else x


def _as_pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SwinIR(nn.Module):
    """DiffBIR's stage-1 SwinIR: maps a [0,1] RGB image to a restored image of the same size.

    Arguments use the published names; only the configuration DiffBIR uses
    (``upsampler="nearest+conv"``, ``unshuffle=True``, ``unshuffle_scale == sf``,
    ``patch_size=1``, no absolute position embedding) is supported. Any input
    size works: it is reflect-padded to a multiple of ``window_size * sf`` and
    cropped back. The output is not clamped.
    """

    scale = 1

    def __init__(
        self,
        img_size: int | Sequence[int] = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 180,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        sf: int = 8,
        img_range: float = 1.0,
        upsampler: str = "nearest+conv",
        resi_connection: str = "1conv",
        unshuffle: bool = True,
        unshuffle_scale: int | None = 8,
    ) -> None:
        super().__init__()
        if upsampler != "nearest+conv" or not unshuffle:
            raise ConfigError(
                "SwinIR: only the DiffBIR variant is supported "
                "(upsampler='nearest+conv', unshuffle=True)"
            )
        if unshuffle_scale != sf or sf not in (4, 8):
            raise ConfigError(
                f"SwinIR: need sf == unshuffle_scale in (4, 8), got {sf}, {unshuffle_scale}"
            )
        if patch_size != 1 or ape:
            raise ConfigError("SwinIR: patch_size must be 1 and ape False")
        if len(depths) != len(num_heads):
            raise ConfigError("SwinIR: depths and num_heads must have the same length")
        num_feat = 64
        self.sf = sf
        self.img_range = img_range
        self.window_size = window_size
        self.pad_multiple = window_size * sf
        self.gradient_checkpointing = use_checkpoint
        mean = RGB_MEAN if in_chans == 3 else (0.0,) * in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.masks = ShiftMaskCache()

        self.conv_first = nn.Sequential(
            nn.PixelUnshuffle(sf), nn.Conv2d(in_chans * sf * sf, embed_dim, 3, 1, 1)
        )
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        resolution = _as_pair(img_size)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            first = sum(depths[:i])
            self.layers.append(
                RSTB(
                    embed_dim,
                    resolution,
                    depth,
                    heads,
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    qk_scale,
                    drop_rate,
                    attn_drop_rate,
                    rates[first : first + depth],
                    resi_connection,
                )
            )
        self.pos_drop = nn.Dropout(drop_rate)
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)

        # Reconstruction at full size: nearest x2 + conv + LeakyReLU per octave.
        self.conv_before_upsample = nn.Sequential(
            nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True)
        )
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1) if sf == 8 else None
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features of the unshuffled, first-conv'd map (same shape out)."""
        x_size = (x.shape[2], x.shape[3])
        t = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                t = checkpoint(layer, t, x_size, self.masks, use_reentrant=False)
            else:
                t = layer(t, x_size, self.masks)
        return _tokens_to_image(self.norm(t), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [0,1] -> ``(B, C, H, W)`` restored."""
        h, w = x.shape[-2:]
        x = _pad_to_multiple(x, self.pad_multiple)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_before_upsample(x)
        ups = [self.conv_up1, self.conv_up2] + ([self.conv_up3] if self.conv_up3 else [])
        for conv in ups:
            x = self.lrelu(conv(F.interpolate(x, scale_factor=2, mode="nearest")))
        x = self.conv_last(self.lrelu(self.conv_hr(x)))
        x = x / self.img_range + mean
        return x[..., :h, :w]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple: reflect where possible, else replicate."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def strip_derived_buffers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``attn_mask`` and ``relative_position_index`` buffers released files carry.

    They are functions of the configuration (and ``attn_mask`` of one input
    size only); this module rebuilds them, so they are not part of its state.
    """
    derived = (".attn_mask", ".relative_position_index")
    return {k: v for k, v in state_dict.items() if not k.endswith(derived)}
