"""MUSIQ, the multi-scale image quality transformer (Ke, Wang, Wang, Milanfar and Yang,
"MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021), a no-reference score; the
KonIQ-10k model predicts a mean opinion score on KonIQ's scale (about 0..100, higher
is better). Written from the paper and pyiqa's conventions, whose published
checkpoint (``musiq_koniq_ckpt-e95806b9.pth``) loads into :class:`MUSIQ` by name.

1. The image, in [0, 1], is mapped to [-1, 1] and seen at three scales: resized
   (bicubic, ``align_corners=False``, no antialiasing) so that its longer side is
   224, then 384 pixels (the other side ``round(side * L / longer)``), and as it is.
2. Each scale is padded with zeros (mid-grey) to whole 32x32 patches, split evenly
   between the two sides (the extra pixel at the bottom/right), and cut into
   patches, row by row. Each patch carries a hashed spatial position: its row and
   column are mapped onto a 10x10 grid by nearest-neighbour sampling
   (``10 * grid_row + grid_col``), so images of every size share one table of 100
   position embeddings; and the index of its scale (0, 1, 2).
3. Every patch goes through a small ResNet stem on its own: a 7x7 stride-2
   convolution, group norm, ReLU, 3x3 stride-2 max-pooling, and one bottleneck block
   (64 -> 256 channels); the convolutions standardise their weights (zero mean, unit
   standard deviation per output channel, + 1e-5) and pad as TensorFlow's ``SAME``.
   The 8x8x256 result, flattened in height-width-channel order, is projected to a
   384-wide token.
4. The tokens plus their position and scale embeddings, after a learned class token,
   go through 14 pre-norm transformer blocks (6 heads, MLP 1152, GELU, layer norms
   with eps 1e-6) and a final layer norm; a linear head on the class token is the
   score.

The reference implementations pad each resized scale to a fixed number of patches
(49 and 144) and mask the padding out of attention; the padding tokens never reach
the class token, so they are left out here, which gives the same score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffbir.errors import DiffBIRError
from diffbir.weights.checkpoint import load_into, load_state_dict

PATCH = 32
#: Longer sides of the resized scales, smallest first (their order is the scale index).
LONGER_SIDES = (224, 384)
HASH_GRID = 10
#: Patches the stem takes at once (its memory stays bounded on large photos).
_STEM_CHUNK = 256


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero padding as TensorFlow's ``SAME``: ``ceil(size / stride)`` outputs, the odd
    pixel of padding at the bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class StdConv(nn.Conv2d):
    """A convolution with standardised weights and ``SAME`` padding (no padding argument)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        x = same_pad(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, w, self.bias, self.stride)


class Bottleneck(nn.Module):
    """1x1, 3x3, 1x1 standardised convolutions with group norms, and a projected shortcut."""

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.conv1 = StdConv(channels, channels, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, channels, eps=1e-4)
        self.conv2 = StdConv(channels, channels, 3, bias=False)
        self.gn2 = nn.GroupNorm(32, channels, eps=1e-4)
        self.conv3 = StdConv(channels, out, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, out, eps=1e-4)
        self.conv_proj = StdConv(channels, out, 1, bias=False)
        self.gn_proj = nn.GroupNorm(32, out, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.conv_proj(x))
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return F.relu(self.gn3(self.conv3(x)) + shortcut)


class Attention(nn.Module):
    """Multi-head self-attention with separate query, key and value projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape

        def split(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(n, t, self.heads, c // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.query), split(self.key), split(self.value))
        return self.out(y.transpose(1, 2).reshape(n, t, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block."""

    def __init__(self, dim: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PositionTable(nn.Module):
    def __init__(self, cells: int, dim: int) -> None:
        super().__init__()
        self.position_emb = nn.Parameter(torch.zeros(1, cells, dim))


class _ScaleTable(nn.Module):
    def __init__(self, scales: int, dim: int) -> None:
        super().__init__()
        self.scale_emb = nn.Parameter(torch.zeros(scales, dim))


class Encoder(nn.Module):
    """Position and scale embeddings, the class token, the blocks and the final norm."""

    def __init__(self, dim: int, hidden: int, heads: int, layers: int, scales: int) -> None:
        super().__init__()
        self.posembed_input = _PositionTable(HASH_GRID * HASH_GRID, dim)
        self.scaleembed_input = _ScaleTable(scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict(
            {f"encoderblock_{i}": Block(dim, hidden, heads) for i in range(layers)}
        )

    def forward(self, tokens: torch.Tensor, where: torch.Tensor, scale: torch.Tensor):
        """The encoded class token of each row of ``tokens`` (``[N, T, C]``); ``where``
        and ``scale`` (``[T]``) index the position and scale tables."""
        x = tokens + self.posembed_input.position_emb[0][where]
        x = x + self.scaleembed_input.scale_emb[scale]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.transformer.values():
            x = block(x)
        return self.encoder_norm(x[:, 0])


def hashed_positions(rows: int, cols: int) -> torch.Tensor:
    """The hashed spatial position of each patch of a ``rows`` x ``cols`` grid, row by
    row, ``[rows * cols]`` in ``0 .. HASH_GRID**2 - 1``."""
    grid = torch.arange(HASH_GRID, dtype=torch.float32)[None, None]

    def sample(count: int) -> torch.Tensor:
        return F.interpolate(grid, size=count, mode="nearest")[0, 0].long()

    return (sample(rows)[:, None] * HASH_GRID + sample(cols)[None, :]).reshape(-1)


def scale_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The sizes the image is resized to, one per entry of :data:`LONGER_SIDES`.

    Raises :class:`DiffBIRError` in one line when a side would round to no pixel.
    """
    sizes = []
    for longer in LONGER_SIDES:
        ratio = longer / max(height, width)
        size = (round(height * ratio), round(width * ratio))
        if min(size) < 1:
            raise DiffBIRError(
                f"MUSIQ cannot score a {width}x{height} image: resized to a longer side of "
                f"{longer} its shorter side has no pixel left (the sides must be less than "
                f"{2 * LONGER_SIDES[0]} times apart)"
            )
        sizes.append(size)
    return sizes


def patches(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (``[N, 3, H, W]``) padded to whole patches and cut row by row:
    ``[N, rows * cols, 3, PATCH, PATCH]`` and the patches' hashed positions."""
    x = same_pad(x, PATCH, PATCH)
    n, c, h, w = x.shape
    rows, cols = h // PATCH, w // PATCH
    cut = x.reshape(n, c, rows, PATCH, cols, PATCH).permute(0, 2, 4, 1, 3, 5)
    return cut.reshape(n, rows * cols, c, PATCH, PATCH), hashed_positions(rows, cols)


def multiscale_patches(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The patches of every scale of ``x`` (in [-1, 1]), their hashed positions and
    their scale indices (see the module notes)."""
    views = [
        F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        for size in scale_sizes(*x.shape[-2:])
    ]
    cut, where, scale = [], [], []
    for index, view in enumerate([*views, x]):
        p, pos = patches(view)
        cut.append(p)
        where.append(pos)
        scale.append(torch.full_like(pos, index))
    return torch.cat(cut, dim=1), torch.cat(where), torch.cat(scale)


class MUSIQ(nn.Module):
    """MUSIQ with pyiqa's parameter names (see the module notes); ``forward`` takes
    images in [0, 1] and gives one score per image."""

    def __init__(
        self,
        dim: int = 384,
        hidden: int = 1152,
        heads: int = 6,
        layers: int = 14,
        stem: int = 64,
    ) -> None:
        super().__init__()
        self.conv_root = StdConv(3, stem, 7, stride=2, bias=False)
        self.gn_root = nn.GroupNorm(32, stem, eps=1e-6)
        self.block1 = Bottleneck(stem, 4 * stem)
        self.embedding = nn.Linear(4 * stem * (PATCH // 4) ** 2, dim)
        self.transformer_encoder = Encoder(dim, hidden, heads, layers, len(LONGER_SIDES) + 1)
        self.head = nn.Linear(dim, 1)
        self.requires_grad_(False).eval()

    def _stem(self, p: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn_root(self.conv_root(p)))
        x = F.max_pool2d(same_pad(x, 3, 2), 3, 2)
        x = self.block1(x)
        return self.embedding(x.permute(0, 2, 3, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The score of each image of ``x`` (``[N, 3, H, W]`` in [0, 1]), ``[N]``."""
        cut, where, scale = multiscale_patches(2 * x - 1)
        n, t = cut.shape[:2]
        flat = cut.reshape(n * t, *cut.shape[2:])
        tokens = torch.cat([self._stem(chunk) for chunk in flat.split(_STEM_CHUNK)])
        where, scale = where.to(x.device), scale.to(x.device)
        cls = self.transformer_encoder(tokens.view(n, t, -1), where, scale)
        return self.head(cls).reshape(-1)


def load_musiq(source) -> MUSIQ:
    """MUSIQ from pyiqa's checkpoint file (or a mapping of the same keys), strictly."""
    return load_into(MUSIQ(), load_state_dict(source), what="MUSIQ")


def build(name: str, options, device: torch.device, *files):
    """The callable ``(x, ref) -> values`` of ``musiq`` (``ref`` unused), from its weights file."""
    model = load_musiq(*files).to(device)

    def metric(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return model(x.float()).double()

    return metric
