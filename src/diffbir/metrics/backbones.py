"""The ImageNet feature extractors of the learned metrics, in plain torch.

Each is an ``nn.Sequential`` called ``features`` with torchvision's layer order, so
that the ``features.*`` tensors of torchvision's published AlexNet and VGG16 files
(``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) load into it by name; the
classifiers of those files are not needed and are left out. No torchvision import.
"""

from __future__ import annotations

import torch
from torch import nn

from diffbir.weights.checkpoint import load_into, load_state_dict

#: VGG16's convolution widths, ``"M"`` a 2x2 max-pooling (torchvision's configuration "D").
VGG16_LAYOUT = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)

#: Indices of the ReLUs whose outputs the metrics read.
ALEXNET_TAPS = (1, 4, 7, 9, 11)
VGG16_TAPS = (3, 8, 15, 22, 29)


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional part (the one-GPU variant torchvision ships)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )


def vgg16_features(pool=None) -> nn.Sequential:
    """VGG16's convolutional part; ``pool(channels)`` replaces each max-pooling when given
    (DISTS uses an L2 pooling there)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2) if pool is None else pool(channels))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


def tapped(features: nn.Sequential, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
    """The outputs of the layers at ``taps`` (up to the last tap; later layers are skipped)."""
    out = []
    for index, layer in enumerate(features):
        x = layer(x)
        if index in taps:
            out.append(x)
            if index == taps[-1]:
                break
    return out


def backbone_state(source) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision AlexNet/VGG16 file (or mapping), without
    the prefix."""
    state = load_state_dict(source)
    return {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}


def load_features(features: nn.Sequential, source, *, what: str) -> nn.Sequential:
    """Load a torchvision file's ``features.*`` into ``features`` (strict, readable diff)."""
    return load_into(features, backbone_state(source), what=what)
