"""MANIQA, the Multi-dimension Attention Network for no-reference image quality
(Yang et al., CVPR Workshops 2022; winner of the NTIRE 2022 NR-IQA challenge), as
pyiqa 0.1.16's ``maniqa`` computes it with the KonIQ-10k checkpoint. Higher is better
(KonIQ-trained scores lie roughly in 0..1).

1. The image (RGB in [0, 1]) mapped to [-1, 1] (``(x - 0.5) / 0.5``). An image whose
   shorter side is 224 pixels or less is first enlarged bilinearly (PyTorch's
   ``interpolate`` with the scale factor ``225 / shorter side``, corners not
   aligned), so that every crop fits.
2. ``crops`` fixed 224x224 crops (20 by default), never random: with
   ``g = floor(sqrt(crops))`` the steps are ``(H - 224) // g`` down and
   ``(W - 224) // g`` across, and the crops are the first ``crops`` cells, row by row,
   of the ``ceil(sqrt(crops))``-square grid of those steps from the top left corner
   (see :func:`crop_boxes`; the default 20 are 4 rows of 5, so the bottom strip of
   ``H - 224 - 3 * step`` rows is never seen).
3. Each crop through a ViT-B/8 (224 px, 8 px patches, 12 heads, LayerNorm eps 1e-6,
   timm's ``vit_base_patch8_224`` layout); the patch tokens (the class token dropped)
   after blocks 7, 8, 9 and 10 (indices 6..9) concatenated to 3072 channels on the
   28x28 grid. Blocks 11 and 12 and the classifier are not needed and not built.
4. Two stages, each: two token-attention blocks (an attention between channels, each
   channel a 784-long vector, with pyiqa's reshuffle of the result back to
   ``[channels, tokens]``, plus a residual), a 1x1 convolution (3072 -> 768, then
   768 -> 384), and a small Swin transformer (two layers of two blocks each: 4x4
   windows, the second block of each shifted by 2, 4 heads, MLP width 768, relative
   position bias; each layer ends with a 3x3 convolution and a ReLU and is added back
   as ``0.8 * layer(x) + x``, the KonIQ variant's scale).
5. Per patch a score (``Linear, ReLU, Linear, ReLU``) and a weight (``Linear, ReLU,
   Linear, Sigmoid``); the image's value is ``sum(w * s) / (sum(w) + 1e-8)`` over
   the patches of all its crops together.

Parameter names are those of pyiqa's MANIQA state dict, so its published
``ckpt_koniq10k.pt`` loads strictly (``weights_only=True``); the tensors this forward
pass never reads (ViT blocks 11-12, its final norm and head, and the Swin stacks'
``downsample`` convolution, trained with the model but unused by it) are dropped
first, by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffbir.errors import DiffBIRError
from diffbir.models.swinir import (
    SWIN_MASK_VALUE,
    relative_position_index,
    shifted_window_mask,
    window_merge,
    window_partition,
)
from diffbir.weights.checkpoint import load_into, load_state_dict

CROP = 224
PATCH = 8
GRID = CROP // PATCH  # 28 tokens a side
CROPS = 20
#: Crops that go through the network together (bounds the memory of the 3072-channel stage).
CHUNK = 4
WIDTH = 768
TAPS = (6, 7, 8, 9)
SWIN_SCALE = 0.8  # the KonIQ (and KADID) checkpoints; the PIPAL one was trained with 0.13
WINDOW = 4

#: Keys of the published file that the forward pass never reads, dropped before loading.
_UNUSED_PREFIXES = (
    "vit.blocks.10.",
    "vit.blocks.11.",
    "vit.norm.",
    "vit.head.",
    "swintransformer1.downsample.",
    "swintransformer2.downsample.",
)


# -- layers without a random initialisation (every tensor comes from the weights file) ---------


class _Linear(nn.Linear):
    def reset_parameters(self) -> None:
        """Left as allocated: :func:`load_maniqa` fills every weight (saves seconds of init)."""


class _Conv2d(nn.Conv2d):
    def reset_parameters(self) -> None:
        """Left as allocated: :func:`load_maniqa` fills every weight."""


# -- the ViT-B/8 backbone ---------------------------------------------------------------------


class _PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = _Conv2d(3, WIDTH, PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = _Linear(dim, hidden)
        self.fc2 = _Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = _Linear(dim, 3 * dim)
        self.proj = _Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _ViTBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.attn = _SelfAttention(WIDTH, 12)
        self.norm2 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.mlp = _Mlp(WIDTH, 4 * WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTB8(nn.Module):
    """ViT-B/8 at 224 px, up to the last tapped block (timm's parameter names)."""

    def __init__(self, depth: int = TAPS[-1] + 1) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_embed = nn.Parameter(torch.zeros(1, GRID * GRID + 1, WIDTH))
        self.patch_embed = _PatchEmbed()
        self.blocks = nn.ModuleList(_ViTBlock() for _ in range(depth))

    def forward(self, x: torch.Tensor, taps: tuple[int, ...] = TAPS) -> torch.Tensor:
        """The patch tokens after the blocks ``taps``, concatenated: ``[B, 784, 768 * len]``."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        out = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in taps:
                out.append(x[:, 1:])
        return torch.cat(out, dim=2)


# -- MANIQA's own layers ----------------------------------------------------------------------


class TABlock(nn.Module):
    """Token attention: attention between the channels of ``[B, C, N]`` (N = 784), residual."""

    def __init__(self, tokens: int = GRID * GRID) -> None:
        super().__init__()
        self.c_q = _Linear(tokens, tokens)
        self.c_k = _Linear(tokens, tokens)
        self.c_v = _Linear(tokens, tokens)
        self.norm_fact = tokens**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        attn = (self.c_q(x) @ self.c_k(x).transpose(-2, -1) * self.norm_fact).softmax(dim=-1)
        # The published model reads [B, N, C] memory as [B, C, N]; kept, the weights expect it.
        return (attn @ self.c_v(x)).transpose(1, 2).reshape(b, c, n) + x


def _shift_mask(size: int, window: int, shift: int) -> torch.Tensor:
    """-100 between tokens of a shifted window that came from different regions, else 0."""
    apart = shifted_window_mask(size, size, window, shift)
    return torch.where(apart, torch.tensor(SWIN_MASK_VALUE), torch.tensor(0.0))


class _WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = _Linear(dim, 3 * dim)
        self.proj = _Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1)[None]
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(b, self.heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwinBlock(nn.Module):
    """One (shifted) window attention block on the 28x28 grid, ``[B, 784, C]``."""

    def __init__(self, dim: int, heads: int, hidden: int, shift: int) -> None:
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, WINDOW)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, hidden)
        if shift:
            self.register_buffer("attn_mask", _shift_mask(GRID, WINDOW, shift))
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        y = self.norm1(x).view(b, GRID, GRID, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, WINDOW), self.attn_mask)
        y = window_merge(y, WINDOW, GRID, GRID)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class _SwinLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.conv = _Conv2d(dim, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, hidden, 0 if i % 2 == 0 else WINDOW // 2) for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, GRID, GRID)
        return F.relu(self.conv(x)).flatten(2).transpose(1, 2)


class SwinStack(nn.Module):
    """MANIQA's Swin part: ``[B, C, 28, 28]`` in and out, each layer added as ``s * f(x) + x``."""

    def __init__(self, dim: int, *, layers: int = 2, depth: int = 2, heads: int = 4,
                 hidden: int = WIDTH, scale: float = SWIN_SCALE) -> None:  # fmt: skip
        super().__init__()
        self.scale = scale
        self.layers = nn.ModuleList(_SwinLayer(dim, heads, hidden, depth) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.transpose(1, 2).reshape(b, c, h, w)


def _head(dim: int, last: nn.Module) -> nn.Sequential:
    # Dropouts at 1 and 2 in the published layout (indices kept for the parameter names).
    return nn.Sequential(_Linear(dim, dim), nn.ReLU(), nn.Identity(), _Linear(dim, 1), last)


class MANIQA(nn.Module):
    """MANIQA (see the module notes); ``forward`` takes RGB in [0, 1] and gives ``[N]`` scores.

    Built alone it holds uninitialised weights: make it with :func:`load_maniqa`.
    """

    def __init__(self, *, crops: int = CROPS, scale: float = SWIN_SCALE) -> None:
        super().__init__()
        if crops < 1:
            raise ValueError("MANIQA needs at least one crop")
        self.crops = crops
        self.vit = ViTB8()
        self.tablock1 = nn.ModuleList(TABlock() for _ in range(2))
        self.conv1 = _Conv2d(4 * WIDTH, WIDTH, 1)
        self.swintransformer1 = SwinStack(WIDTH, scale=scale)
        self.tablock2 = nn.ModuleList(TABlock() for _ in range(2))
        self.conv2 = _Conv2d(WIDTH, WIDTH // 2, 1)
        self.swintransformer2 = SwinStack(WIDTH // 2, scale=scale)
        self.fc_score = _head(WIDTH // 2, nn.ReLU())
        self.fc_weight = _head(WIDTH // 2, nn.Sigmoid())
        self.requires_grad_(False).eval()

    def patches(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch scores and weights of normalised 224x224 crops, each ``[B, 784]``."""
        x = self.vit(crops).transpose(1, 2)  # [B, 3072, 784]
        for tab in self.tablock1:
            x = tab(x)
        x = self.swintransformer1(self.conv1(x.reshape(-1, 4 * WIDTH, GRID, GRID)))
        x = x.flatten(2)
        for tab in self.tablock2:
            x = tab(x)
        x = self.swintransformer2(self.conv2(x.reshape(-1, WIDTH, GRID, GRID)))
        x = x.flatten(2).transpose(1, 2)  # [B, 784, 384]
        return self.fc_score(x)[..., 0], self.fc_weight(x)[..., 0]

    def forward(self, x: torch.Tensor, crops: int | None = None) -> torch.Tensor:
        """The score of each image of ``x``, over ``crops`` crops (the model's own count
        when not given)."""
        scores = []
        for image in normalised_crops(x, crops or self.crops):
            weighted = total = 0
            for chunk in image.split(CHUNK):
                score, weight = self.patches(chunk)
                weighted = weighted + (weight * score).sum()
                total = total + weight.sum()
            scores.append(weighted / (total + 1e-8))
        return torch.stack(scores)


# -- crops -------------------------------------------------------------------------------------


def crop_boxes(h: int, w: int, crops: int = CROPS) -> list[tuple[int, int]]:
    """The top left corners ``(row, column)`` of the crops of an ``h`` x ``w`` image (after
    any enlarging), in order; see the module notes."""
    if min(h, w) < CROP:
        raise ValueError(f"an image of {w}x{h} has no {CROP}x{CROP} crop")
    steps = math.isqrt(crops)
    side = steps if steps * steps == crops else steps + 1
    step_h, step_w = (h - CROP) // steps, (w - CROP) // steps
    cells = [(i * step_h, j * step_w) for i in range(side) for j in range(side)]
    return cells[:crops]


def normalised_crops(x: torch.Tensor, crops: int = CROPS) -> torch.Tensor:
    """The normalised crops of each image of ``x`` (``[N, 3, H, W]`` in [0, 1]):
    ``[N, crops, 3, 224, 224]``."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise DiffBIRError(f"MANIQA needs RGB images [N, 3, H, W], got {tuple(x.shape)}")
    x = (x - 0.5) / 0.5
    h, w = x.shape[-2:]
    if min(h, w) <= CROP:
        x = F.interpolate(x, scale_factor=(CROP + 1) / min(h, w), mode="bilinear")
        h, w = x.shape[-2:]
    boxes = crop_boxes(h, w, crops)
    return torch.stack([x[..., r : r + CROP, c : c + CROP] for r, c in boxes], dim=1)


# -- weights -----------------------------------------------------------------------------------


def used_state(source) -> dict[str, torch.Tensor]:
    """The tensors of a MANIQA file (or mapping) that :class:`MANIQA` loads: the published
    names, with the unused ones (see the module notes) dropped."""
    state = load_state_dict(source)
    return {k: v for k, v in state.items() if not k.startswith(_UNUSED_PREFIXES)}


def load_maniqa(source, *, crops: int = CROPS) -> MANIQA:
    """MANIQA with pyiqa's KonIQ checkpoint (``ckpt_koniq10k.pt``, a path or a mapping),
    loaded strictly after dropping the unused tensors."""
    model = MANIQA(crops=crops)
    return load_into(model, used_state(source), what="MANIQA (KonIQ)")


def build(name: str, options, device: torch.device, *files):
    """The callable ``(x, ref) -> values`` of ``maniqa`` (``ref`` unused)."""
    model = load_maniqa(*files).to(device)

    def metric(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return model(x.float()).double()

    return metric
