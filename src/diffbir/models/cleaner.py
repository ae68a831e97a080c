"""Stage-1 "cleaners": build, recognise, load and apply the restoration modules.

A cleaner maps a [0,1] RGB NCHW batch to the restored image, the same size
(``scale == 1``: SwinIR, SCUNet) or four times larger (``scale == 4``:
RRDBNet/BSRNet). Released weights load under their published key names;
the architecture is recognised from the keys when not named.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from os import PathLike

import torch
from torch import nn

from diffbir.errors import CheckpointError, ConfigError
from diffbir.imaging.tiling import tiled_apply
from diffbir.models.rrdbnet import RRDBNet
from diffbir.models.scunet import SCUNet
from diffbir.models.swinir import SwinIR, strip_derived_buffers
from diffbir.weights.checkpoint import load_into, load_state_dict

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "swinir": SwinIR,
    "rrdbnet": RRDBNet,
    "scunet": SCUNet,
}

# Constructor arguments of the released checkpoints (published names), as
# recorded in the reference manifests.
RELEASED_CONFIGS: dict[str, dict] = {
    "swinir": {
        "img_size": 64,
        "patch_size": 1,
        "in_chans": 3,
        "embed_dim": 180,
        "depths": [6, 6, 6, 6, 6, 6, 6, 6],
        "num_heads": [6, 6, 6, 6, 6, 6, 6, 6],
        "window_size": 8,
        "mlp_ratio": 2,
        "sf": 8,
        "img_range": 1.0,
        "upsampler": "nearest+conv",
        "resi_connection": "1conv",
        "unshuffle": True,
        "unshuffle_scale": 8,
    },
    "rrdbnet": {"in_nc": 3, "out_nc": 3, "nf": 64, "nb": 23, "gc": 32, "sf": 4},
    "scunet": {"in_nc": 3, "config": [4, 4, 4, 4, 4, 4, 4], "dim": 64},
}

# A key only that architecture's checkpoints have.
_SIGNATURE_KEYS = {
    "swinir": "conv_first.1.weight",
    "rrdbnet": "RRDB_trunk.0.RDB1.conv1.weight",
    "scunet": "m_head.0.weight",
}

# The 2023 full checkpoints keep the SwinIR under this prefix.
_EMBEDDED_PREFIX = "preprocess_model."

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
DEFAULT_AUTO_TILE_ABOVE = 1024


def build_cleaner(arch: str, **config) -> nn.Module:
    """Build a cleaner with random weights: the released configuration updated by ``config``.

    ``config`` takes the published constructor names (e.g. ``embed_dim``,
    ``depths`` for SwinIR; ``nf``, ``nb`` for RRDBNet; ``config``, ``dim`` for
    SCUNet). Raises :class:`ConfigError` for an unknown arch or argument name.
    """
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise ConfigError(
            f"unknown cleaner architecture {arch!r}; choose from {sorted(ARCHITECTURES)}"
        )
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ConfigError(
            f"{arch}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}"
        )
    return cls(**{**RELEASED_CONFIGS[arch], **config})


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the architecture (``"swinir"``, ``"rrdbnet"``, ``"scunet"``) whose keys ``state_dict`` has.

    Raises :class:`CheckpointError` when no characteristic key is present.
    """
    for arch, key in _SIGNATURE_KEYS.items():
        if key in state_dict or _EMBEDDED_PREFIX + key in state_dict:
            return arch
    shown = ", ".join(list(state_dict)[:5]) or "no keys"
    raise CheckpointError(
        f"not a stage-1 (swinir, rrdbnet, scunet) checkpoint: none of "
        f"{', '.join(_SIGNATURE_KEYS.values())} found (first keys: {shown})"
    )


def _cleaner_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The cleaner's own keys: the ``preprocess_model.`` part of a full checkpoint if present."""
    embedded = {
        k[len(_EMBEDDED_PREFIX) :]: v
        for k, v in state_dict.items()
        if k.startswith(_EMBEDDED_PREFIX)
    }
    return embedded or dict(state_dict)


def load_cleaner(
    weights: str | PathLike | Mapping[str, torch.Tensor],
    arch: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **config,
) -> nn.Module:
    """Load a released (or our own) stage-1 checkpoint into its module, in eval mode.

    ``weights`` is a path (safetensors or a PyTorch pickle, loaded safely) or a
    state dict in the published layout, with any of the usual wrappers.
    ``arch`` is inferred from the keys when None; ``config`` overrides the
    released constructor arguments. Weights that do not fit raise
    :class:`CheckpointError` listing the missing, unexpected and wrong-shape keys.
    """
    state = _cleaner_keys(load_state_dict(weights))
    arch = arch or infer_arch(state)
    model = build_cleaner(arch, **config)
    if arch == "swinir":
        state = strip_derived_buffers(state)
    load_into(model, state, what=f"{arch} cleaner")
    return model.to(device=device, dtype=dtype).eval()


def apply_cleaner(
    model: nn.Module,
    x: torch.Tensor,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    auto_tile_above: int | None = DEFAULT_AUTO_TILE_ABOVE,
    progress: bool = False,
) -> torch.Tensor:
    """Run a cleaner on ``x`` ([0,1] RGB NCHW), tile by tile when the image is large.

    With ``tile`` None, tiles of ``DEFAULT_TILE`` are used only when a side
    exceeds ``auto_tile_above`` (None: never). Tile sizes are rounded up to the
    model's ``pad_multiple`` (64 for SwinIR and SCUNet) so tiles need no
    padding. Runs in the caller's grad mode and in ``x``'s dtype; the output
    is ``model.scale`` times the input size.
    """
    if x.ndim != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
    if tile is None:
        if auto_tile_above is None or max(x.shape[-2:]) <= auto_tile_above:
            return model(x)
        tile = DEFAULT_TILE
    multiple = getattr(model, "pad_multiple", 1)
    tile = -(-tile // multiple) * multiple
    overlap = min(overlap, tile // 2)
    return tiled_apply(
        model, x, tile=tile, overlap=overlap, scale=getattr(model, "scale", 1), progress=progress
    )
