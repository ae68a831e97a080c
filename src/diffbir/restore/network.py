"""What the samplers are given: the network ``model(x, t, context)`` and the latent
image guidance of a run.

The UNet + ControlNet of the stage-2 model with the condition latent bound in,
run over the whole latent or over blended latent tiles (each tile may bring
its own conditional text rows), and at most ``unet_batch`` rows per call: on
the CPU, the rows of CFG's pair one at a time are faster than the pair in one
call, as the release's EDM and spaced samplers call its two branches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffbir.config.limits import LATENT_FACTOR
from diffbir.diffusion.denoiser import ModelFn
from diffbir.diffusion.guidance import LatentGuidance, release_step_rescale
from diffbir.diffusion.registry import grid_timesteps
from diffbir.imaging.tiling import tiled_apply
from diffbir.models.vae import decode_from_latent
from diffbir.restore.plan import overlap_pixels

TileContext = Callable[[tuple[int, int, int, int]], torch.Tensor]


def latent_network(
    stage2,
    dtype: torch.dtype,
    cond_latent: torch.Tensor,
    strength: float,
    *,
    tile: int | None = None,
    overlap: float = 0.0,
    tile_context: TileContext | None = None,
    unet_batch: int = 0,
    progress: bool = False,
) -> ModelFn:
    """``model(x, t, context)`` over the whole latent, or over blended latent tiles of
    ``tile`` image pixels (``tile // 8`` latent pixels, ``overlap`` a fraction) when the
    latent is larger than one tile.

    ``tile_context(box)`` gives a tile's own conditional text rows; they replace the
    first rows of ``context``, which the :class:`~diffbir.diffusion.denoiser.Denoiser`
    puts first. Each UNet+ControlNet call takes at most ``unet_batch`` rows (``0``: all
    of them). ``strength`` scales the ControlNet's residuals. With ``progress``, a tiled
    call shows a bar of its tiles (a step over a large photo takes minutes on a CPU).
    """

    def call(x: torch.Tensor, t, cond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        out = stage2.denoise(x.to(dtype), t, cond, text.to(dtype), control_scale=strength)
        return out.float()

    def denoise(x: torch.Tensor, t, cond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return by_rows(call, unet_batch, x, t, cond, text)

    # CFG doubles the batch; the repeated condition is made once, not every step.
    repeated: dict[int, torch.Tensor] = {}

    def cond_for(batch: int) -> torch.Tensor:
        if batch not in repeated:
            repeated[batch] = repeat_to(cond_latent.to(dtype), batch)
        return repeated[batch]

    def whole(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return denoise(x, t, cond_for(x.shape[0]), context)

    if tile is None or max(cond_latent.shape[-2:]) * LATENT_FACTOR <= tile:
        return whole
    latent_tile = tile // LATENT_FACTOR
    latent_overlap = overlap_pixels(latent_tile, overlap, 1)

    def tiled(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        cond = cond_for(x.shape[0])

        def one(xt: torch.Tensor, ct: torch.Tensor, box) -> torch.Tensor:
            text = context
            if tile_context is not None:
                own = tile_context(box)
                text = torch.cat([own, context[own.shape[0] :]])
            return denoise(xt, t, ct, text)

        return tiled_apply(
            one, x, cond, tile=latent_tile, overlap=latent_overlap, with_box=True,
            progress=progress,
        )  # fmt: skip

    return tiled


def by_rows(call, limit: int, x: torch.Tensor, t, cond: torch.Tensor, text: torch.Tensor):
    """``call(x, t, cond, text)`` over at most ``limit`` rows at a time (``0``: all at
    once), the outputs joined. ``t`` and ``text`` with one row are shared by every row."""
    batch = x.shape[0]
    if limit <= 0 or batch <= limit:
        return call(x, t, cond, text)
    t = torch.as_tensor(t, device=x.device)

    def rows(v: torch.Tensor, i: int) -> torch.Tensor:
        return v if v.dim() == 0 or v.shape[0] == 1 else v[i : i + limit]

    return torch.cat(
        [
            call(x[i : i + limit], rows(t, i), rows(cond, i), rows(text, i))
            for i in range(0, batch, limit)
        ]
    )


def repeat_to(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x`` repeated along the batch to ``batch`` rows (as it is when it has them)."""
    if x.shape[0] == batch:
        return x
    return x.repeat(batch // x.shape[0], *([1] * (x.dim() - 1)))


def latent_guidance(
    config,
    vae,
    dtype: torch.dtype,
    schedule,
    cond_latent: torch.Tensor,
    cond_img: torch.Tensor,
    plan,
    stage1_hw: tuple[int, int],
):
    """Latent image guidance of a run (``config``), or None at scale 0, in the v2
    release's units (``--g_scale``): the step on z0 is ``-3000 g dL/dz0 / coef1``, coef1
    of the sampler's own step, so one step moves the spaced sampler's posterior mean by
    ``-3000 g dL/dz0`` as in v2. ``cond_img`` is the padded condition image, ``stage1_hw``
    its size before padding, ``plan`` the run's tiles (pixel guidance decodes by tiles)."""
    if config.guidance_scale <= 0:
        return None

    pixel = config.guidance_space == "pixel"
    grid = grid_timesteps(config.sampler, schedule, config.steps)
    mask = None
    if config.guidance_mask is not None:
        mask = _mask_for(config.guidance_mask, cond_img.shape[-2:], stage1_hw)
    tile = plan.latent // LATENT_FACTOR if pixel and plan.latent is not None else None
    return LatentGuidance(
        cond_latent.float(),
        3000.0 * config.guidance_scale,
        start=config.guidance_start,
        stop=config.guidance_stop,
        repeat=config.guidance_repeat,
        space=config.guidance_space,
        loss=config.guidance_loss,
        decode=(lambda z: decode_from_latent(vae, z.to(dtype), clamp=False).float()),
        pixel_target=cond_img.float(),
        step_rescale=release_step_rescale(schedule.alphas_cumprod, grid),
        mask=mask,
        tile=tile,
        tile_overlap=overlap_pixels(tile, plan.overlap, 1) if tile else 0,
    )


def _mask_for(mask: torch.Tensor, padded_hw, stage1_hw) -> torch.Tensor:
    """The user's mask ([H,W] or [1,1,H,W] at the input's size) at the condition image's
    size (bilinear), zero over the padding: [1,1,H',W'] float32."""
    mask = mask.float()
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    mask = F.interpolate(mask[:1, :1], size=tuple(stage1_hw), mode="bilinear", align_corners=False)
    pad_h, pad_w = padded_hw[0] - stage1_hw[0], padded_hw[1] - stage1_hw[1]
    return F.pad(mask.clamp(0, 1), (0, pad_w, 0, pad_h))
