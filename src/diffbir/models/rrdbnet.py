"""RRDBNet (ESRGAN generator) as BSRNet: the x4 stage-1 model of DiffBIR's later releases.

Residual-in-residual dense blocks at low resolution, then nearest x2
upsamplings with convs. State-dict names are KAIR's (``RRDB_trunk``,
``trunk_conv``, ``upconv1``, ``HRconv``...), the layout of the released BSRNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffbir.errors import ConfigError


class ResidualDenseBlock5C(nn.Module):
    """Five densely connected 3x3 convs; the last one's output is scaled by 0.2 and added."""

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Three dense blocks in sequence with a 0.2-scaled residual around them."""

    def __init__(self, nf: int, gc: int = 32) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock5C(nf, gc)
        self.RDB2 = ResidualDenseBlock5C(nf, gc)
        self.RDB3 = ResidualDenseBlock5C(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """BSRNet: [0,1] RGB in, ``sf`` times larger [0,1] RGB out (not clamped).

    Arguments use the published (KAIR) names; ``sf`` is 2 or 4.
    """

    def __init__(
        self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, sf: int = 4
    ) -> None:
        super().__init__()
        if sf not in (2, 4):
            raise ConfigError(f"RRDBNet: sf must be 2 or 4, got {sf}")
        self.scale = sf
        self.pad_multiple = 1
        self.gradient_checkpointing = False
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv2 = nn.Conv2d(nf, nf, 3, 1, 1) if sf == 4 else None
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.RRDB_trunk:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, sf * H, sf * W)``."""
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self._trunk(fea))
        for conv in (self.upconv1, self.upconv2):
            if conv is not None:
                fea = self.lrelu(conv(F.interpolate(fea, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.HRconv(fea)))
