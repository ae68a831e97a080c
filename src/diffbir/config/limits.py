"""Limits and choices that options are checked against, below everything that uses them
(the settings validate them; the restore path plans with them)."""

from __future__ import annotations

#: Longest side, in pixels, that raising the short side to ``--min-side`` may give the
#: diffusion stage: a 3x2000 strip raised to a 512 short side would be 512x341,333
#: (175 megapixels per buffer); images more elongated than 16:1 are raised less.
MAX_DIFFUSION_SIDE = 8192

#: Image pixels per latent pixel of Stable Diffusion's VAE (KL-f8), each way.
LATENT_FACTOR = 8

#: ``--tile-captions``: one caption for the whole image, one per latent tile, or none for
#: the tiles (see :mod:`diffbir.restore.prompts`).
TILE_CAPTIONS = ("whole", "each", "off")


def ddim_steps_fit(num_timesteps: int, steps: int) -> bool:
    """Whether the release's DDIM grid of ``steps`` (``range(0, T, T // steps) + 1``) stays
    inside a schedule of ``num_timesteps``: its stride at least 2 and its last timestep
    ``(T - 1) // stride * stride + 1`` below T."""
    stride = num_timesteps // steps if steps > 0 else 0
    return stride >= 2 and (num_timesteps - 1) % stride != 0


def ddim_steps_near(num_timesteps: int, steps: int) -> list[int]:
    """The step counts nearest ``steps`` (one below, one above) whose DDIM grid fits."""
    below = next((n for n in range(steps - 1, 0, -1) if ddim_steps_fit(num_timesteps, n)), None)
    above = next(
        (n for n in range(steps + 1, num_timesteps // 2 + 1) if ddim_steps_fit(num_timesteps, n)),
        None,
    )
    return [n for n in (below, above) if n is not None]
