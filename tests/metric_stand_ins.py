"""Deterministic stand-in weights for the learned metrics whose published weights cannot
be downloaded here (CLIP RN50 of CLIP-IQA, the FID InceptionV3).

Only numpy and torch: the same file made the tensors fed to pyiqa when
tests/fixtures/metrics/pyiqa_clipiqa.json and pyiqa_fid.json were recorded (in the
side environment) and makes them again in the tests. Each tensor is a function of
its key and shape alone: a counter-based hash (splitmix64 of the element index,
seeded by the CRC-32 of ``prefix.key``), uniform in [-1, 1), scaled by the rules
of :func:`scale_for` (Kaiming's for convolutions, unit gain for linear maps, CLIP's
own initial scales for its embeddings, near-identity normalisation layers).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

_GOLDEN = 0x9E3779B97F4A7C15
_CHUNK = 1 << 22


def uniform(n: int, seed: int, first: int = 0) -> np.ndarray:
    """Values in [0, 1) of elements ``first .. first + n - 1``: splitmix64 of
    ``seed``-offset counters (float64)."""
    out = np.empty(n, dtype=np.float64)
    base = np.uint64((seed * _GOLDEN + _GOLDEN + first) % 2**64)
    for start in range(0, n, _CHUNK):
        z = np.arange(start, min(n, start + _CHUNK), dtype=np.uint64) + base
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        out[start : start + len(z)] = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


def scale_for(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """``(offset, half-width)`` of the uniform values of one tensor."""
    name = key.rsplit(".", 1)[-1]
    if name == "running_var":
        return 1.0, 0.2
    if name == "running_mean":
        return 0.0, 0.05
    if key == "logit_scale":
        return math.log(100.0), 0.0
    if key == "token_embedding.weight":
        return 0.0, 0.02 * math.sqrt(3)
    if key == "positional_embedding":
        return 0.0, 0.01 * math.sqrt(3)
    if key.endswith("attnpool.positional_embedding"):
        return 0.0, shape[1] ** -0.5 * math.sqrt(3)
    if key == "text_projection":
        return 0.0, math.sqrt(3 / shape[0])
    if len(shape) == 1:
        return (1.0, 0.1) if name == "weight" else (0.0, 0.02)
    fan_in = int(np.prod(shape[1:]))
    if len(shape) == 4:
        return 0.0, math.sqrt(6 / fan_in)
    return 0.0, math.sqrt(3 / fan_in)


def stand_in(
    shapes: dict[str, tuple[int, ...]],
    prefix: str,
    *,
    half: bool = False,
    rows: dict[str, list[int]] | None = None,
) -> dict:
    """A state dict with ``shapes``' keys; ``half``: values rounded to float16 (stored as
    float32), as OpenAI's CLIP files hold them. ``rows``: for a 2-D key, only those rows
    are made (the rest zero): an embedding table of which a test reads a few rows."""
    state = {}
    for key, shape in shapes.items():
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.long)
            continue
        offset, width = scale_for(key, shape)
        seed = zlib.crc32(f"{prefix}.{key}".encode())
        if rows and key in rows:
            values = torch.zeros(shape)
            for r in sorted(set(rows[key])):
                u = uniform(shape[1], seed, first=r * shape[1])
                values[r] = torch.from_numpy((offset + (2 * u - 1) * width).astype(np.float32))
        else:
            n = int(np.prod(shape))
            u = uniform(n, seed)
            values = torch.from_numpy(
                (offset + (2 * u - 1) * width).reshape(shape).astype(np.float32)
            )
        state[key] = values.half().float() if half else values
    return state
