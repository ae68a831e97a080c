"""LPIPS and DISTS: distances between deep features of an image and its reference.

* LPIPS v0.1 (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
  Perceptual Metric", CVPR 2018): images in [0, 1] mapped to [-1, 1] and shifted and
  scaled per channel (shift -0.030, -0.088, -0.188; scale 0.458, 0.448, 0.450); five
  ReLU outputs of AlexNet (``lpips``) or VGG16 (``lpips-vgg``), each unit-normalised
  over channels (``f / (|f| + 1e-10)``); the squared difference weighted per channel
  by the published linear layer (a 1x1 convolution), averaged over pixels, summed
  over layers. Weights: torchvision's ImageNet backbone plus the authors' linear
  layers (``lpips_v0.1_alex.pth``, ``lpips_v0.1_vgg.pth``, keys ``lin{k}.model.1.weight``).
* DISTS (Ding et al., "Image Quality Assessment: Unifying Structure and Texture
  Similarity", TPAMI 2020): VGG16 with every max-pooling replaced by an L2 pooling
  (a 3x3 Hann window, stride 2), on ImageNet-normalised images; for the image itself
  and the five stages' outputs, per channel, a texture term
  ``(2 mx my + c) / (mx^2 + my^2 + c)`` and a structure term
  ``(2 cov + c) / (vx + vy + c)`` (c = 1e-6), weighted by the published ``alpha`` and
  ``beta`` (normalised to sum to one together); the score is one minus their sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffbir.metrics.backbones import (
    ALEXNET_TAPS,
    VGG16_TAPS,
    alexnet_features,
    backbone_state,
    tapped,
    vgg16_features,
)
from diffbir.weights.checkpoint import load_into, load_state_dict

_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _Linear(nn.Module):
    """One LPIPS layer weight: a 1x1 convolution to one channel (``model.1`` as published)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 on ``net`` = ``"alex"`` or ``"vgg"`` (see the module notes)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net == "alex":
            self.features, self.taps = alexnet_features(), ALEXNET_TAPS
            widths = (64, 192, 384, 256, 256)
        elif net == "vgg":
            self.features, self.taps = vgg16_features(), VGG16_TAPS
            widths = (64, 128, 256, 512, 512)
        else:
            raise ValueError(f"LPIPS has no backbone {net!r}")
        for k, width in enumerate(widths):
            self.add_module(f"lin{k}", _Linear(width))
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The distance of each image of ``x`` to ``ref`` (both in [0, 1]), ``[N]``."""
        a = tapped(self.features, ((2 * x - 1) - self.shift) / self.scale, self.taps)
        b = tapped(self.features, ((2 * ref - 1) - self.shift) / self.scale, self.taps)
        total = 0
        for k, (fa, fb) in enumerate(zip(a, b)):
            fa = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{k}")((fa - fb) ** 2).mean(dim=(2, 3))
        return total.reshape(-1)


class L2Pool(nn.Module):
    """sqrt of a 3x3 Hann-weighted mean of x^2, stride 2 (DISTS' replacement of max-pooling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hann = torch.tensor([0.5, 1.0, 0.5])
        window = hann[:, None] * hann[None, :]
        window = (window / window.sum()).expand(channels, 1, 3, 3).contiguous()
        self.register_buffer("window", window, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.window, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS on VGG16 with L2 pooling (see the module notes)."""

    widths = (3, 64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features(pool=L2Pool)
        self.alpha = nn.Parameter(torch.full((1, sum(self.widths), 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, sum(self.widths), 1, 1), 0.1))
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.requires_grad_(False).eval()

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, *tapped(self.features, (x - self.mean) / self.std, VGG16_TAPS)]

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The distance of each image of ``x`` to ``ref`` (both in [0, 1]), ``[N]``."""
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, self.widths, dim=1)
        betas = torch.split(self.beta / total, self.widths, dim=1)
        texture = structure = 0
        c = 1e-6
        for fa, fb, alpha, beta in zip(self._stages(x), self._stages(ref), alphas, betas):
            ma, mb = fa.mean((2, 3), keepdim=True), fb.mean((2, 3), keepdim=True)
            va = ((fa - ma) ** 2).mean((2, 3), keepdim=True)
            vb = ((fb - mb) ** 2).mean((2, 3), keepdim=True)
            cov = (fa * fb).mean((2, 3), keepdim=True) - ma * mb
            texture = texture + (alpha * (2 * ma * mb + c) / (ma**2 + mb**2 + c)).sum(1)
            structure = structure + (beta * (2 * cov + c) / (va + vb + c)).sum(1)
        return (1 - (texture + structure)).reshape(-1)


def load_lpips(net: str, backbone, linear) -> LPIPS:
    """LPIPS with torchvision's backbone file (or mapping) and the authors' linear layers."""
    model = LPIPS(net)
    state = {f"features.{k}": v for k, v in backbone_state(backbone).items()}
    state.update(load_state_dict(linear))
    return load_into(model, state, what=f"LPIPS ({net})")


def load_dists(backbone, alpha_beta) -> DISTS:
    """DISTS with torchvision's VGG16 file (or mapping) and the authors' ``alpha``/``beta``."""
    model = DISTS()
    state = {f"features.{k}": v for k, v in backbone_state(backbone).items()}
    state.update(load_state_dict(alpha_beta))
    return load_into(model, state, what="DISTS")


def build(name: str, options, device: torch.device, *files):
    """The callable ``(x, ref) -> values`` of ``lpips``, ``lpips-vgg`` or ``dists``, from its
    weights files (the order of :data:`diffbir.metrics.names.METRICS`)."""
    if name == "dists":
        model = load_dists(*files)
    else:
        model = load_lpips("vgg" if name == "lpips-vgg" else "alex", *files)
    model = model.to(device)

    def metric(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return model(x.float(), ref.float()).double()

    return metric
