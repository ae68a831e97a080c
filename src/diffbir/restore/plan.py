"""Tile planning: which stage runs tile by tile, and how big the tiles are.

The plan depends only on the image size, the dtype's width and the activation
budget (``--max-memory``, or the fixed default of
:data:`diffbir.config.settings.DEFAULT_MAX_MEMORY`), never on the memory that happens
to be free, so the same command gives the same image on every machine.

Sizes are planned here too, before any memory is spent: the largest result a
run may ask for (:data:`MAX_OUTPUT_PIXELS`, shared by the CLI and the web UI)
and the diffusion stage's size for very elongated images
(:func:`diffusion_min_side`, which keeps its long side within
:data:`MAX_DIFFUSION_SIDE`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffbir.config.limits import LATENT_FACTOR, MAX_DIFFUSION_SIDE
from diffbir.config.presets import DEFAULT_TILE_OVERLAP
from diffbir.errors import ConfigError

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

#: Largest result, in pixels, that ``diffbir restore`` and the web UI accept (8192 x
#: 8192, 67 megapixels); larger ones are refused before any model is loaded.
MAX_OUTPUT_PIXELS = 8192 * 8192


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

    def given(name: str):
        return None if options is None else getattr(options, name)

    return TilePlan(
        cleaner=choose("cleaner", given("cleaner_tile")),
        vae_encode=choose("vae_encode", given("vae_tile")),
        vae_decode=choose("vae_decode", given("vae_tile")),
        latent=choose("latent", given("latent_tile")),
        overlap=DEFAULT_TILE_OVERLAP if options is None else options.tile_overlap,
    )


def condition_size(target_hw: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The diffusion stage's pixel size for an output of ``target_hw`` (``min_side`` as
    :func:`diffusion_min_side` gives it), rounded up: used to choose tiles."""
    h, w = target_hw
    short = min(h, w)
    if short < min_side:
        factor = min_side / short
        h, w = math.ceil(h * factor), math.ceil(w * factor)
    return h, w


def overlap_pixels(tile: int, fraction: float, multiple: int) -> int:
    """``fraction`` of ``tile`` as a multiple of ``multiple`` (at least one when > 0)."""
    if fraction <= 0:
        return 0
    overlap = max(multiple, round(tile * fraction / multiple) * multiple)
    return min(overlap, tile - multiple)


def check_output_size(
    lq_hw: tuple[int, int],
    upscale: float,
    *,
    max_pixels: int | None = MAX_OUTPUT_PIXELS,
    knob: str = "--upscale",
) -> tuple[int, int]:
    """The result's ``(height, width)`` for an input of ``lq_hw`` at ``upscale``, or a
    :class:`ConfigError` (one line; ``knob`` names the setting to change) when it would
    be empty or above ``max_pixels``."""
    h, w = lq_hw
    if not math.isfinite(upscale) or upscale <= 0:
        raise ConfigError(f"{knob} must be a positive finite number, got {upscale}")
    rows, cols = h * upscale, w * upscale
    if rows < 1 or cols < 1:
        raise ConfigError(
            f"the result of this {w}x{h} image at --upscale {upscale:g} would be "
            f"{cols:.2f}x{rows:.2f} pixels; raise {knob}"
        )
    out_h, out_w = int(rows), int(cols)
    if max_pixels is not None and out_h * out_w > max_pixels:
        side = math.isqrt(max_pixels)
        raise ConfigError(
            f"the result would be {out_w}x{out_h} pixels, above the limit of "
            f"{max_pixels:,} pixels ({side}x{side}); lower {knob}"
        )
    return out_h, out_w


def diffusion_min_side(
    target_hw: tuple[int, int], min_side: int, max_side: int = MAX_DIFFUSION_SIDE
) -> int:
    """The short side the diffusion stage raises an image of ``target_hw`` to: ``min_side``,
    unless that would make its long side longer than ``max_side`` (and than it already
    is); then the largest short side that keeps the long side within ``max_side``, at
    least the image's own (not raised at all)."""
    from diffbir.imaging.resize import short_side_size

    h, w = target_hw
    short, long = min(h, w), max(h, w)
    if short >= min_side or max(short_side_size(h, w, min_side)) <= max(max_side, long):
        return min_side
    side = max(short, (short * max_side) // long)
    while side > short and max(short_side_size(h, w, side)) > max_side:
        side -= 1
    return side


Region = tuple[float, float, float, float]  # (top, bottom, left, right) as fractions of the image


def latent_tiles(latent_hw: tuple[int, int], plan: TilePlan) -> list[tuple[int, int, int, int]]:
    """The latent tiles ``(top, bottom, left, right)`` the diffusion stage samples for a
    latent of ``latent_hw`` under ``plan``; one box over everything when it is untiled."""
    from diffbir.imaging.tiling import tile_spans

    h, w = latent_hw
    tile = plan.latent
    if tile is None or max(h, w) * LATENT_FACTOR <= tile:
        return [(0, h, 0, w)]
    latent_tile = tile // LATENT_FACTOR
    overlap = overlap_pixels(latent_tile, plan.overlap, 1)
    return [
        (r0, r1, c0, c1)
        for r0, r1 in tile_spans(h, latent_tile, overlap)
        for c0, c1 in tile_spans(w, latent_tile, overlap)
    ]


@dataclass(frozen=True)
class RunPlan:
    """The sizes of one input size's run, planned before any memory is spent: the output
    (``target_hw``), the short side the diffusion stage raises it to (``min_side``; less
    than asked for very elongated images, with a ``note`` saying so), the diffusion
    stage's pixel size (``cond_hw``) and its per-stage ``tiles``."""

    target_hw: tuple[int, int]
    min_side: int
    cond_hw: tuple[int, int]
    tiles: TilePlan
    note: str | None = None

    def latent_regions(self) -> list[Region]:
        """Where each latent tile lies in the photo, as fractions of its height and width;
        one region over the whole image when sampling is not tiled."""
        cond_h, cond_w = self.cond_hw
        f = LATENT_FACTOR
        latent_hw = (math.ceil(cond_h / f), math.ceil(cond_w / f))
        return [
            box_fraction(box, (cond_h / f, cond_w / f))
            for box in latent_tiles(latent_hw, self.tiles)
        ]


def plan_run(
    lq_hw: tuple[int, int],
    config,
    *,
    element_size: int = 4,
    max_pixels: int | None = MAX_OUTPUT_PIXELS,
) -> RunPlan:
    """The :class:`RunPlan` of an input of ``lq_hw`` under the resolved ``config``: the
    result within ``max_pixels`` (a :class:`ConfigError` otherwise), the diffusion
    stage's long side bounded for very elongated images, tiles for the memory budget."""
    target_hw = check_output_size(lq_hw, config.upscale, max_pixels=max_pixels)
    min_side = diffusion_min_side(target_hw, config.min_side)
    note = None
    if min_side < config.min_side:
        note = (
            f"{target_hw[1]}x{target_hw[0]} is too elongated to raise its short side to "
            f"{config.min_side}: the diffusion stage works at a short side of {min_side} "
            f"(long side at most {MAX_DIFFUSION_SIDE})"
        )
    cond_hw = condition_size(target_hw, min_side)
    tiles = plan_tiles(
        *cond_hw, budget=config.max_memory, element_size=element_size, options=config
    )
    return RunPlan(target_hw, min_side, cond_hw, tiles, note)


def latent_tile_regions(lq_hw: tuple[int, int], options, *, element_size: int = 4) -> list[Region]:
    """Where each latent tile of a run lies in the photo (:meth:`RunPlan.latent_regions`
    of the run's plan). ``options`` is a resolved run config."""
    return plan_run(lq_hw, options, element_size=element_size, max_pixels=None).latent_regions()


def box_fraction(box: tuple[int, int, int, int], hw: tuple[float, float]) -> Region:
    """``box`` in pixels of an image of ``hw`` as fractions, clipped to [0, 1]."""
    h, w = hw
    r0, r1, c0, c1 = box
    return (min(r0 / h, 1.0), min(r1 / h, 1.0), min(c0 / w, 1.0), min(c1 / w, 1.0))


def overlap_area(a: Region, b: Region) -> float:
    """The area two regions share (fractions of the image)."""
    height = min(a[1], b[1]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[2], b[2])
    return max(height, 0.0) * max(width, 0.0)
