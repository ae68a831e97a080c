"""Deterministic stand-in weights for MANIQA (no torch RNG, no diffbir import).

The published KonIQ checkpoint cannot be downloaded on these machines, so the tests
and the recording of ``fixtures/metrics/pyiqa_maniqa.json`` (pyiqa in a side
environment) both fill MANIQA's tensors from this file: the counter-based hash of
``test_metrics.stand_in_backbone`` (splitmix64 of the element index, seeded by the
CRC-32 of the tensor's name, uniform in [-1, 1)), scaled by the tensor's role so the
network's outputs are neither constant nor saturated:

* LayerNorm weights ``1 + 0.1 u``; biases ``0.02 u``; the class token, position
  embedding and relative position bias tables ``0.02 u``;
* the per-patch score head's last bias ``1.5 + 0.02 u`` (its ReLU would otherwise
  zero most patches);
* every other weight ``g * u * sqrt(3 / fan_in)`` (variance ``g^2 / fan_in``), with the
  gain ``g`` 0.25 for the token-attention values (``c_v``) and 0.15 for the first
  layer of both heads (``fc_score.0``, ``fc_weight.0``), 1 elsewhere: without them the
  activations grow through the residual token attention until the heads saturate
  (most patch scores 0, weights 0 or 1).

The uniform numbers are the hash's top 24 bits in single precision (exact), which is
quicker than a float64 path for MANIQA's 115 M values.

Integer buffers and the Swin masks are not weights: pass them in ``keep``.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

_GAINS = {
    **{f"tablock{s}.{i}.c_v.weight": 0.25 for s in (1, 2) for i in (0, 1)},
    "fc_score.0.weight": 0.15,
    "fc_weight.0.weight": 0.15,
}


def _uniform(n: int, seed: int) -> np.ndarray:
    golden = 0x9E3779B97F4A7C15
    z = np.arange(n, dtype=np.uint64)
    z += np.uint64((seed * golden + golden) % 2**64)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    z >>= np.uint64(40)
    u = z.astype(np.float32)
    u *= np.float32(2.0**-23)
    u -= np.float32(1.0)
    return u  # uniform in [-1, 1), 24 bits


def _hashed(key: str, shape: tuple[int, ...]) -> np.ndarray:
    return _uniform(int(np.prod(shape)), zlib.crc32(key.encode())).reshape(shape)


def stand_in_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The stand-in value of MANIQA's tensor ``key`` of ``shape`` (float32)."""
    u = _hashed(key, shape)
    parts = key.split(".")
    leaf, parent = parts[-1], parts[-2] if len(parts) > 1 else ""
    if leaf == "weight" and parent.startswith("norm"):
        u *= np.float32(0.1)
        u += np.float32(1.0)
    elif key == "fc_score.3.bias":
        u *= np.float32(0.02)
        u += np.float32(1.5)
    elif leaf == "bias" or leaf in ("cls_token", "pos_embed", "relative_position_bias_table"):
        u *= np.float32(0.02)
    else:
        fan_in = int(np.prod(shape[1:]))
        u *= np.float32(_GAINS.get(key, 1.0) * (3.0 / fan_in) ** 0.5)
    return torch.from_numpy(u)


def stand_in_maniqa(
    shapes: dict[str, tuple[int, ...]], keep: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """A state dict with ``shapes``' keys: the tensors of ``keep`` as given, the rest hashed."""
    keep = keep or {}
    return {k: keep[k] if k in keep else stand_in_tensor(k, tuple(s)) for k, s in shapes.items()}
