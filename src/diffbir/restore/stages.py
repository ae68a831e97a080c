"""The stages of a restore, as the release's inference path runs them.

Plain functions of the models they use; :class:`diffbir.restore.pipeline.DiffBIRPipeline`
calls them in order (run input -> clean -> encode -> sample -> decode -> colour
fix). Nothing here is clamped before the final quantisation, as released.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from diffbir.config.limits import LATENT_FACTOR
from diffbir.diffusion.noise import ImageStream
from diffbir.imaging.color import adain_color_fix, wavelet_color_fix
from diffbir.imaging.resize import bicubic, pad_to_multiple, pil_bicubic, resize_short_side
from diffbir.imaging.tiled_vae import tiled_decode, tiled_encode
from diffbir.imaging.tiling import tiled_apply
from diffbir.models.rrdbnet import RRDBNet
from diffbir.models.scunet import SCUNet
from diffbir.models.vae import decode_from_latent
from diffbir.restore.base import RestoreResult
from diffbir.restore.plan import TilePlan, overlap_pixels


def cleaner_arch(cleaner: torch.nn.Module) -> str:
    """``"rrdbnet"`` (BSRNet, x4), ``"scunet"`` or ``"swinir"`` (same-size cleaners)."""

    if isinstance(cleaner, RRDBNet):
        return "rrdbnet"
    if isinstance(cleaner, SCUNet):
        return "scunet"
    return "swinir"


def output_size(lq_hw: tuple[int, int], upscale: float) -> tuple[int, int]:
    """The size of the restored image for an input of ``lq_hw`` pixels (truncated, as released)."""
    return (max(1, int(lq_hw[0] * upscale)), max(1, int(lq_hw[1] * upscale)))


def run_input(lq: torch.Tensor, upscale: float, arch: str) -> torch.Tensor:
    """What the release's loop hands its pipeline: same-size cleaners get the input
    resized by ``upscale`` with Pillow's bicubic on the 8-bit image; BSRNet the input."""
    if arch == "rrdbnet":
        return lq.float()
    h, w = lq.shape[-2:]
    return pil_bicubic(lq, (int(h * upscale), int(w * upscale)))


def clean(
    cleaner: torch.nn.Module,
    x: torch.Tensor,
    upscale: float,
    *,
    plan: TilePlan | None,
    min_side: int,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Stage 1 on the run input. Returns ``I_reg`` (not clamped) and the output size.

    SwinIR: the short side raised to ``min_side`` first, zero-padded to a multiple
    of 64, cropped back. SCUNet: run as is (it pads itself), raised after. BSRNet:
    x4, then resized to the output size (or a ``min_side`` short side). Tiled when
    the plan says so (the short side is then raised after, as the release's tiled
    path does).
    """

    arch = cleaner_arch(cleaner)
    h, w = x.shape[-2:]
    target = output_size((h, w), upscale) if arch == "rrdbnet" else (h, w)
    scale = 4 if arch == "rrdbnet" else 1
    dtype = next(cleaner.parameters()).dtype
    tile = plan.cleaner if plan else None

    def model(t: torch.Tensor) -> torch.Tensor:
        return cleaner(t.to(dtype)).float()

    with torch.no_grad():
        if tile is not None and max(h, w) > tile:
            overlap = overlap_pixels(tile, plan.overlap, 8)
            out = tiled_apply(model, x, tile=tile, overlap=overlap, scale=scale)
        elif arch == "swinir":
            if min(h, w) < min_side:
                x = resize_short_side(x, min_side)
            h0, w0 = x.shape[-2:]
            out = model(pad_to_multiple(x, 64))[..., :h0, :w0]
        else:
            out = model(x)
    if arch == "rrdbnet":
        if min(target) < min_side:
            return resize_short_side(out, min_side), target
        return bicubic(out, target), target
    if min(out.shape[-2:]) < min_side:
        out = resize_short_side(out, min_side)
    return out, target


def encode(stage2, image: torch.Tensor, tile: int | None, dtype: torch.dtype) -> torch.Tensor:
    """VAE posterior mean x 0.18215 of ``image`` (already padded), float32; tile by tile
    with GroupNorm statistics shared over the whole image when ``tile`` (pixels) is
    smaller than it."""

    # Contiguous on purpose: on CPU, GroupNorm over a channels-last tensor (what a
    # batched cleaner can return) is off by ~3% at 512x576, moving the latent by 5%.
    x = image.to(dtype).contiguous()
    if tile is not None and max(x.shape[-2:]) > tile:
        return tiled_encode(stage2.vae, x, tile).float()
    return stage2.encode_image(x).float()


def decode(vae, z: torch.Tensor, tile: int | None, dtype: torch.dtype) -> torch.Tensor:
    """VAE decode to ``(x + 1) / 2``, NOT clamped (the colour fix and the final
    quantisation see the raw values, as released). ``tile``: pixels of the decoded
    image; tiles share GroupNorm statistics, so they cannot differ in tone."""

    z = z.to(dtype).contiguous()
    if tile is not None and max(z.shape[-2:]) * LATENT_FACTOR > tile:
        return tiled_decode(vae, z, max(1, tile // LATENT_FACTOR), clamp=False).float()
    return decode_from_latent(vae, z, clamp=False).float()


def color_fix(image: torch.Tensor, reference: torch.Tensor, kind: str) -> torch.Tensor:
    """The release's wavelet colour fix toward ``reference`` (5 levels), AdaIN, or none."""
    if kind == "none":
        return image

    fix = wavelet_color_fix if kind == "wavelet" else adain_color_fix
    return fix(image.float(), reference.float())


def concat_results(parts: list[RestoreResult], config) -> RestoreResult:
    """One result of the passes ``parts`` over a batch (their images in order, their
    timings summed)."""
    timings: dict[str, float] = {}
    for part in parts:
        for key, value in part.timings.items():
            timings[key] = timings.get(key, 0.0) + value
    return RestoreResult(
        image=torch.cat([p.image for p in parts]),
        stage1=torch.cat([p.stage1 for p in parts]),
        timings=timings,
        tiles=parts[0].tiles,
        config=config,
        intermediates={
            key: torch.cat([p.intermediates[key] for p in parts]) for key in parts[0].intermediates
        },
        notes=[note for p in parts for note in p.notes],
        prompts=[prompt for p in parts for prompt in p.prompts],
    )


@contextmanager
def timed(timings: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    """Add the block's wall time (the device synchronised) to ``timings[name]``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def restore_in_passes(restorer, lq: torch.Tensor, config, prompts, run) -> RestoreResult:
    """What every restorer's ``restore`` does around its model pass ``run(lq, groups,
    config, prompts)``: check the batch, make the prompts (``restorer.image_prompts``)
    when none are given, seed one stream per image, and with ``n_samples`` N > 1 make
    each image's N results ``samples_per_run`` at a time from its one stream
    (image-major order), as the release's ``--n_samples``/``--batch_size`` do."""
    from diffbir.errors import ConfigError

    if lq.dim() == 3:
        lq = lq.unsqueeze(0)
    if lq.dim() != 4 or lq.shape[1] != 3:
        raise ConfigError(f"expected an RGB batch [B,3,H,W], got shape {tuple(lq.shape)}")
    if prompts is None:
        prompts = restorer.image_prompts(lq, config)
        restorer.captioners.free_if_memory_is_short()
    elif len(prompts) != lq.shape[0]:
        raise ConfigError(f"{len(prompts)} prompts for {lq.shape[0]} images")
    streams = [ImageStream.seeded(config.seed, restorer.device) for _ in range(lq.shape[0])]
    if config.n_samples == 1:
        return run(lq, [(1, s) for s in streams], config, prompts)
    parts = []
    for index, stream in enumerate(streams):
        done = 0
        while done < config.n_samples:
            rows = min(config.samples_per_run, config.n_samples - done)
            image = lq[index : index + 1].expand(rows, -1, -1, -1)
            parts.append(run(image, [(rows, stream)], config, [prompts[index]]))
            done += rows
    result = concat_results(parts, config)
    result.prompts = list(prompts)
    return result
