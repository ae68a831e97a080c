"""Tile planning: which stage runs tile by tile, and how big the tiles are.

The plan depends only on the image size, the dtype's width and the activation
budget (``--max-memory``, or the fixed default of
:data:`diffbir.settings.DEFAULT_MAX_MEMORY`), never on the memory that happens
to be free, so the same command gives the same image on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TilePlan:
    """Tile sizes in pixels of the image each stage sees; ``None`` = whole image."""

    cleaner: int | None
    vae_encode: int | None
    vae_decode: int | None
    latent: int | None
    overlap: float

    @property
    def any(self) -> bool:
        return any(
            t is not None for t in (self.cleaner, self.vae_encode, self.vae_decode, self.latent)
        )


# Rough peak activation bytes per pixel of the stage's image at fp32, measured on
# SD 2.1-sized models (see benchmarks/): used only to choose tile sizes.
_BYTES_PER_PIXEL = {"cleaner": 1_500, "vae_encode": 8_000, "vae_decode": 10_000, "latent": 4_000}
_TILE_CHOICES = (2048, 1536, 1024, 768, 512, 384, 256)


def plan_tiles(
    height: int,
    width: int,
    *,
    budget: float,
    element_size: int = 4,
    options=None,
) -> TilePlan:
    """Choose per-stage tile sizes so that each stage's activations fit ``budget`` bytes.

    ``height`` x ``width`` is the condition image (the diffusion stage's pixel
    size). Explicit sizes in ``options`` win; a stage whose whole image fits
    runs untiled. The plan depends on nothing but these arguments.
    """
    if options is None:
        from diffbir.settings import RestoreOptions

        options = RestoreOptions()
    scale = element_size / 4

    def choose(stage: str, explicit: int | None) -> int | None:
        if explicit is not None:
            return None if explicit >= max(height, width) else explicit
        per_pixel = _BYTES_PER_PIXEL[stage] * scale
        if height * width * per_pixel <= budget:
            return None
        for tile in _TILE_CHOICES:
            if tile * tile * per_pixel <= budget and tile < max(height, width):
                return tile
        return _TILE_CHOICES[-1]

    return TilePlan(
        cleaner=choose("cleaner", options.cleaner_tile),
        vae_encode=choose("vae_encode", options.vae_tile),
        vae_decode=choose("vae_decode", options.vae_tile),
        latent=choose("latent", options.latent_tile),
        overlap=options.tile_overlap,
    )


def _condition_size(target_hw: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The diffusion stage's pixel size for an output of ``target_hw``."""
    h, w = target_hw
    short = min(h, w)
    if short < min_side:
        factor = min_side / short
        h, w = math.ceil(h * factor), math.ceil(w * factor)
    return h, w


def _overlap_pixels(tile: int, fraction: float, multiple: int) -> int:
    """``fraction`` of ``tile`` as a multiple of ``multiple`` (at least one when > 0)."""
    if fraction <= 0:
        return 0
    overlap = max(multiple, round(tile * fraction / multiple) * multiple)
    return min(overlap, tile - multiple)
