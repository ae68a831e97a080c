"""Limits and choices that options are checked against, below everything that uses them
(the settings validate them; the restore path plans with them)."""

from __future__ import annotations

#: Longest side, in pixels, that raising the short side to ``--min-side`` may give the
#: diffusion stage: a 3x2000 strip raised to a 512 short side would be 512x341,333
#: (175 megapixels per buffer); images more elongated than 16:1 are raised less.
MAX_DIFFUSION_SIDE = 8192

#: ``--tile-captions``: one caption for the whole image, one per latent tile, or none for
#: the tiles (see :mod:`diffbir.restore.prompts`).
TILE_CAPTIONS = ("whole", "each", "off")
