"""LoRA weights merged into a model once, at load: no adapter runs per call.

A LoRA adapts a linear or convolution layer ``W`` with two small factors: ``A``
(``r`` rows, the layer's input, and for a convolution its kernel, stride and
padding) and ``B`` (a 1x1 map from ``r`` to the layer's output). The adapted layer
computes ``W x + scale * B (A x)``, which is the plain layer with the weight
``W + scale * B @ A``; merging that weight once makes the adapted model exactly as
fast as the base model.

Files follow peft's naming, as HYPIR's ``HYPIR_sd2.pth`` does:
``<module path>.lora_A[.<adapter>].weight`` and ``...lora_B...``, module paths as
the diffusers model names them. peft itself is not needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from diffbir.errors import CheckpointError

# Prefixes that peft and some trainers put before the model's own module paths.
_PREFIXES = ("base_model.model.", "module.", "unet.")


def lora_targets(model: nn.Module, modules: Iterable[str]) -> dict[str, nn.Module]:
    """``path -> layer`` for every linear/convolution layer of ``model`` that a LoRA on
    ``modules`` adapts (peft's rule: the path is a name in ``modules`` or ends with
    ``"." + name``)."""
    names = tuple(modules)
    found = {}
    for path, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if any(path == name or path.endswith("." + name) for name in names):
            found[path] = module
    return found


def split_lora_state_dict(
    weights: Mapping[str, torch.Tensor],
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """``(path -> {"A": tensor, "B": tensor}, keys that are not LoRA factors)``."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for key, value in weights.items():
        path = key
        for prefix in _PREFIXES:
            path = path.removeprefix(prefix)
        for part in ("A", "B"):
            marker = f".lora_{part}."
            if marker in path and path.endswith(".weight"):
                module = path.split(marker)[0]
                factors.setdefault(module, {})[part] = value
                break
        else:
            other.append(key)
    return factors, other


def merge_lora(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    modules: Iterable[str],
    *,
    scale: float = 1.0,
    what: str = "LoRA",
) -> int:
    """Add ``scale * B @ A`` of every LoRA factor pair in ``weights`` to its layer of
    ``model``, in place (computed in float32, stored in the layer's dtype). Returns the
    number of layers merged.

    Every layer that a LoRA on ``modules`` adapts must have both factors and nothing
    else may be in ``weights``: otherwise a :class:`CheckpointError` names the missing
    and unexpected keys (a file for another model, or cut short) and nothing is merged."""
    targets = lora_targets(model, modules)
    factors, other = split_lora_state_dict(weights)
    missing = sorted(
        f"{path}.lora_{part}"
        for path in targets
        for part in ("A", "B")
        if part not in factors.get(path, {})
    )
    unexpected = sorted(other) + sorted(path for path in factors if path not in targets)
    if missing or unexpected:
        raise CheckpointError(_key_report(what, missing, unexpected, len(targets)))
    deltas = {}
    for path, layer in targets.items():
        deltas[path] = _delta(path, layer, factors[path]["A"], factors[path]["B"], what)
    with torch.no_grad():
        for path, layer in targets.items():
            merged = layer.weight.float() + scale * deltas[path]
            layer.weight.copy_(merged.to(layer.weight.dtype))
    return len(targets)


def _delta(path: str, layer: nn.Module, a: torch.Tensor, b: torch.Tensor, what: str):
    """``B @ A`` in the shape of ``layer.weight`` (float32)."""
    a, b = a.float(), b.float()
    weight = layer.weight
    rank = a.shape[0] if a.dim() else 0
    if isinstance(layer, nn.Linear):
        ok = a.dim() == 2 and b.dim() == 2 and b.shape[1] == rank
        delta = b @ a if ok else None
    else:
        ok = a.dim() == 4 and b.dim() == 4 and b.shape[1] == rank and b.shape[2:] == (1, 1)
        delta = torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a) if ok else None
    if delta is None or delta.shape != weight.shape:
        raise CheckpointError(
            f"{what}: {path}: factors of shapes {tuple(a.shape)} and {tuple(b.shape)} do not "
            f"fit its weight {tuple(weight.shape)} (a LoRA for another model?)"
        )
    return delta


def _key_report(what: str, missing: list[str], unexpected: list[str], wanted: int) -> str:
    def few(keys: list[str]) -> str:
        shown = ", ".join(keys[:3])
        return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
    return (
        f"{what}: the file does not fit the model ({wanted} layers to adapt): "
        + "; ".join(parts)
        + " - a partial download, or a LoRA for another model?"
    )
