"""Latent image guidance: the DiffBIR paper's controllable module (its Algorithm 1).

At a sampling step at original timestep t, the sampler forms
``z0_hat`` from the model output and hands it to :class:`LatentGuidance`,
which returns it moved toward the stage-1 result::

    D(z0) = || f(z0) - y ||^2 / (C H W)          (per sample; batch losses summed,
                                                   so samples do not interact)
    z0 <- z0 - s * grad_z0 D(z0)                  (repeated ``repeat`` times)

* ``space="latent"``: f = identity, y = E(I_reg) (the condition latent).
* ``space="pixel"``: f = the VAE decoder (``decode``, latent -> [0,1] image),
  y = I_reg; the loss is computed on the [-1, 1] scale as the release does
  ("inputs: [-1, 1]"), and its gradient back-propagates through ``decode``.
* ``loss="weighted_mse"`` (pixel space only, as in the v2 release): the squared
  error is weighted by ``1 - tanh(S)``, S the Sobel gradient magnitude of the
  grayscale target (0.2989 R + 0.5870 G + 0.1140 B, replicate padding) summed
  over 2x2 blocks: flat regions follow I_reg, edges stay free.

The sampler then rebuilds its update from the corrected z0 (spaced DDPM: the
posterior mean from it, Algorithm 1; the others: eps recomputed from it).

Range: guidance applies at original timestep t when ``stop < t + 1 < start``
(the release compares ``t_now = t + 1`` with ``g_start``/``g_stop``; defaults
1001 and -1 cover every step). ``repeat`` k: the release repeats the gradient
step k times on the same z0_hat within one sampling step (no re-noising); so
does this class.

Scale: ``scale`` is the paper's s exactly as written above. The releases
differ by constants: v1 adds ``0.5 * delta`` to the posterior mean instead of
``coef1 * delta``; v2 multiplies the user's scale by 3000 and divides the step
by ``posterior_mean_coef1`` of the spaced chain (so the posterior mean moves by
the full step). ``rescale_by_posterior=True`` asks spaced DDPM for that
division, so ``LatentGuidance(..., scale=3000 * g, rescale_by_posterior=True)``
with ``sample_ddpm`` is the v2 release's ``--g_scale g``; the other samplers
have no posterior coefficient and ignore the flag.

The gradient is taken under ``torch.enable_grad()`` on a detached copy, so the
sampler can run under ``torch.no_grad()``. ``torch.inference_mode`` is NOT
supported with guidance (its tensors cannot enter autograd): this raises.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffbir.imaging.tiling import blend_weights, tile_spans

from ..errors import ConfigError, DiffBIRWarning

SPACES = ("latent", "pixel")
LOSSES = ("mse", "weighted_mse")

_GRAY = (0.2989, 0.5870, 0.1140)


def edge_weight_map(image: torch.Tensor, block: int = 2) -> torch.Tensor:
    """Weights ``1 - tanh(block-summed Sobel magnitude)`` of an RGB image in [0, 1], [B,1,H,W].

    As the DiffBIR v2 release's weighted MSE: grayscale, 3x3 Sobel with replicate
    padding, gradient magnitude, summed over ``block`` x ``block`` blocks, tanh,
    broadcast back over each block. Sizes not divisible by ``block`` are padded
    (replicate) and cropped back.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ConfigError("edge weights need an RGB image batch [B,3,H,W]")
    gray_k = torch.tensor(_GRAY, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    gray = (image * gray_k).sum(dim=1, keepdim=True)
    sobel_x = torch.tensor([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=image.dtype)
    sobel = torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1).to(image.device)
    grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), sobel)
    mag = grad.pow(2).sum(dim=1, keepdim=True).sqrt()
    h, w = mag.shape[-2:]
    ph, pw = (-h) % block, (-w) % block
    if ph or pw:
        mag = F.pad(mag, (0, pw, 0, ph), mode="replicate")
    sums = F.avg_pool2d(mag, block) * (block * block)
    weight = 1.0 - sums.tanh()
    weight = weight.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
    return weight[..., :h, :w]


def posterior_coef1(a_t: float, a_prev: float) -> float:
    """``posterior_mean_coef1`` of a DDPM step from cumulative alpha ``a_t`` to ``a_prev``:
    the weight of x0 in the posterior mean, ``(1 - a_t / a_prev) sqrt(a_prev) / (1 - a_t)``."""
    if a_t >= 1.0:
        return 1.0
    return (1.0 - a_t / a_prev) * math.sqrt(a_prev) / (1.0 - a_t)


def release_step_rescale(alphas_cumprod, timesteps) -> Callable[[int], float]:
    """``t -> 1 / coef1`` of the step that starts at grid timestep ``t`` (the next grid
    timestep below it, or the clean end): the v2 release's factor on the guidance step,
    which makes one step move the posterior mean by exactly ``-3000 g dL/dz0``.

    For the spaced sampler it is the release's ``1 / posterior_mean_coef1``; other
    samplers get the factor of the same step on their own grid (nearest grid timestep
    for midpoints), so a scale moves each sampler's estimate by the same fraction of
    the gap per step.
    """
    a = [float(v) for v in alphas_cumprod]
    grid = sorted({int(t) for t in timesteps})
    factors = {}
    for k, t in enumerate(grid):
        a_prev = a[grid[k - 1]] if k > 0 else 1.0
        factors[t] = 1.0 / posterior_coef1(a[t], a_prev)

    def rescale(t: int) -> float:
        t = int(t)
        if t in factors:
            return factors[t]
        return factors[min(grid, key=lambda g: abs(g - t))]

    rescale.factors = factors  # grid timestep -> factor, for the overshoot check
    return rescale


class LatentGuidance:
    """Moves each step's z0_hat toward a target (latent or pixel space); see the module doc.

    Call it as ``guidance(x0_hat, t) -> x0_hat'`` with t the ORIGINAL timestep (int).
    Outside the range, or with ``scale == 0``, it returns ``x0_hat`` itself (the
    very same tensor, so a sampler's result is bitwise that of no guidance).
    Holds no mutable state: one instance can serve many runs.

    ``scale`` multiplies the gradient as written (the paper's s; the v2 release's
    ``--g_scale g`` is ``scale = 3000 g`` with ``step_rescale``). ``step_rescale(t)``
    gives the per-step factor when the sampler passes none (see
    :func:`release_step_rescale`). ``mask`` ([B|1,1,H,W] in [0, 1], pixel size):
    where the pull applies (white holds to the target, black leaves the prior
    free); area-averaged to the latent grid in latent space. ``latent_target``
    (latent space): a callable giving the target of each gradient step instead of
    the fixed ``target`` (the v2 release samples the encoder's posterior every
    time). ``tile``/``tile_overlap`` (latent pixels, pixel space): the gradient is
    taken tile by tile, decoding only the tile it guides, and blended.
    """

    def __init__(
        self,
        target: torch.Tensor | None,
        scale: float,
        *,
        start: int = 1001,
        stop: int = -1,
        repeat: int = 1,
        space: str = "latent",
        loss: str = "mse",
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pixel_target: torch.Tensor | None = None,
        rescale_by_posterior: bool = False,
        step_rescale: Callable[[int], float] | None = None,
        mask: torch.Tensor | None = None,
        latent_target: Callable[[], torch.Tensor] | None = None,
        tile: int | None = None,
        tile_overlap: int = 0,
    ) -> None:
        if space not in SPACES:
            raise ConfigError(f"unknown guidance space {space!r}; expected one of {SPACES}")
        if loss not in LOSSES:
            raise ConfigError(f"unknown guidance loss {loss!r}; expected one of {LOSSES}")
        if float(scale) < 0:
            raise ConfigError(f"guidance scale must be >= 0, got {scale}")
        if int(repeat) < 1:
            raise ConfigError(f"guidance repeat must be >= 1, got {repeat}")
        if space == "latent":
            if target is None and latent_target is None:
                raise ConfigError("latent guidance needs the target latent")
            if loss == "weighted_mse" and pixel_target is None:
                raise ConfigError("weighted_mse guidance needs pixel_target to find the edges")
        else:
            if decode is None:
                raise ConfigError("pixel-space guidance needs a decode function")
            if pixel_target is None:
                raise ConfigError("pixel-space guidance needs pixel_target (an image in [0, 1])")
        if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1):
            raise ConfigError("a guidance mask is a [B,1,H,W] tensor of weights in [0, 1]")
        self.target = None if target is None else target.detach()
        self.scale = float(scale)
        self.start = int(start)
        self.stop = int(stop)
        self.repeat = int(repeat)
        self.space = space
        self.loss = loss
        self.decode = decode
        self.pixel_target = None if pixel_target is None else pixel_target.detach()
        self.rescale_by_posterior = bool(rescale_by_posterior)
        self.step_rescale = step_rescale
        self.latent_target = latent_target
        self.tile = tile
        self.tile_overlap = int(tile_overlap)
        weight = None
        if loss == "weighted_mse":
            weight = edge_weight_map(self.pixel_target.float())
        if mask is not None:
            mask = mask.detach().float().clamp(0, 1)
            weight = mask if weight is None else weight * _fit(mask, weight.shape[-2:])
        if weight is not None and space == "latent":
            # The latent pixel covers an 8x8 block: its weight is the block's mean.
            weight = _to_latent_grid(weight, self._latent_hw())
        self.weight = weight
        self._warn_if_overshooting()

    def max_fraction(self) -> float | None:
        """Latent MSE only: the largest fraction of the gap to the target that one guided
        step moves the estimate (``2 scale rescale(t) / (C H W)``), over the active steps."""
        factors = getattr(self.step_rescale, "factors", None)
        if self.space != "latent" or factors is None or self.scale == 0.0:
            return None
        if self.target is None and self.pixel_target is None:
            return None  # the size is known only once latent_target is called
        active = [f for t, f in factors.items() if self.active(t)]
        if not active:
            return None
        numel = 4 * self._latent_hw()[0] * self._latent_hw()[1]
        return 2.0 * self.scale * max(active) / numel

    def _warn_if_overshooting(self) -> None:
        fraction = self.max_fraction()
        if fraction is None or fraction <= 1.0:
            return
        warnings.warn(
            f"guidance: this scale moves the estimate {fraction:.1f} times the gap to the "
            "stage-1 latent in the first guided step (latent space, this image size), so it "
            f"overshoots; scales up to {1.0 / fraction:.3g} of it stay within one gap per "
            "step, or raise --guidance-stop/lower --guidance-start to skip the noisiest steps",
            DiffBIRWarning,
            stacklevel=3,
        )

    def _latent_hw(self) -> tuple[int, int]:
        if self.target is not None:
            return tuple(self.target.shape[-2:])
        h, w = self.pixel_target.shape[-2:]
        return h // 8, w // 8

    def active(self, t: int) -> bool:
        """Whether guidance applies at original timestep ``t`` (``stop < t + 1 < start``)."""
        return self.scale != 0.0 and self.stop < int(t) + 1 < self.start

    def distance(self, x0: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """D per sample ([B]): mean (weighted) squared error of f(x0) to the target."""
        if self.space == "latent":
            target = self.target if target is None else target
            pred, target = x0, target.to(device=x0.device, dtype=x0.dtype)
        else:
            pred = self.decode(x0).float() * 2.0 - 1.0
            target = self.pixel_target.to(device=pred.device, dtype=pred.dtype) * 2.0 - 1.0
            target = _fit(target, pred.shape[-2:])
        err = (pred - target).pow(2)
        if self.weight is not None:
            weight = _fit(self.weight.to(device=err.device, dtype=err.dtype), err.shape[-2:])
            err = err * weight
        return err.flatten(1).mean(dim=1)

    def gradient(self, z: torch.Tensor) -> torch.Tensor:
        """d(sum of D)/dz0 at ``z`` (whole image, or tile by tile in pixel space)."""
        if self.space == "pixel" and self.tile is not None and max(z.shape[-2:]) > self.tile:
            return self._tiled_gradient(z)
        target = self.latent_target() if self.latent_target is not None else None
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            loss = self.distance(z, target).sum()
            (grad,) = torch.autograd.grad(loss, z)
        return grad

    def _tiled_gradient(self, z: torch.Tensor) -> torch.Tensor:
        """The pixel loss's gradient from overlapping latent tiles, each decoded alone;
        a tile's loss is its share of the whole image's mean, and the tiles' gradients
        are blended with the smooth weights of :mod:`diffbir.imaging.tiling`."""
        h, w = z.shape[-2:]
        full = self.pixel_target.to(z.device, torch.float32) * 2.0 - 1.0
        weight_full = None if self.weight is None else self.weight.to(z.device, torch.float32)
        numel = 3 * full.shape[-2] * full.shape[-1]
        grad = torch.zeros_like(z, dtype=torch.float32)
        norm = torch.zeros((1, 1, h, w), device=z.device)
        rows = tile_spans(h, self.tile, self.tile_overlap)
        cols = tile_spans(w, self.tile, self.tile_overlap)
        for y0, y1 in rows:
            for x0, x1 in cols:
                blend = blend_weights(
                    y1 - y0, x1 - x0, self.tile_overlap,
                    top=y0 > 0, bottom=y1 < h, left=x0 > 0, right=x1 < w,
                ).to(z.device)  # fmt: skip
                piece = z[..., y0:y1, x0:x1].detach()
                with torch.enable_grad():
                    piece.requires_grad_(True)
                    pred = self.decode(piece).float() * 2.0 - 1.0
                    region = (..., slice(8 * y0, 8 * y1), slice(8 * x0, 8 * x1))
                    err = (pred - _fit(full[region], pred.shape[-2:])).pow(2)
                    if weight_full is not None:
                        err = err * _fit(weight_full[region], err.shape[-2:])
                    (g,) = torch.autograd.grad(err.sum() / numel, piece)
                grad[..., y0:y1, x0:x1] += g.float() * blend
                norm[..., y0:y1, x0:x1] += blend
        return (grad / norm.clamp_min(1e-12)).to(z.dtype)

    def __call__(self, x0: torch.Tensor, t: int, step_scale: float | None = None) -> torch.Tensor:
        """``x0`` after ``repeat`` steps ``x0 -= scale * step_scale * grad D`` (or ``x0`` itself).

        ``step_scale`` None: ``step_rescale(t)`` when set, else 1."""
        if not self.active(t):
            return x0
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "latent image guidance needs autograd: run the sampler under torch.no_grad(), "
                "not torch.inference_mode()"
            )
        if step_scale is None:
            step_scale = self.step_rescale(t) if self.step_rescale is not None else 1.0
        z = x0.detach().clone()
        for _ in range(self.repeat):
            z = (z - (self.scale * step_scale) * self.gradient(z)).detach()
        return z


class StepGuidance:
    """One sampling run's guidance, pulled once per step (mutable: make one per run).

    A step's first x0 estimate is moved by ``guidance``; its inner evaluations
    (Heun's corrector, a midpoint) get that same correction back instead of a
    pull of their own, so a sampler of any order is pulled once per step.
    """

    def __init__(self, guidance: Callable) -> None:
        self.guidance = guidance
        self.delta: torch.Tensor | None = None  # the current step's correction

    def pull(self, x0: torch.Tensor, t, step_scale: float = 1.0) -> torch.Tensor:
        """``x0`` moved toward the target at model time ``t`` (its nearest timestep).

        ``step_scale`` 1 leaves the guidance its own per-step factor (``step_rescale``)."""
        t = int(round(float(t)))
        guided = self.guidance(x0, t) if step_scale == 1.0 else self.guidance(x0, t, step_scale)
        self.delta = None if guided is x0 else guided - x0
        return guided

    def reuse(self, x0: torch.Tensor) -> torch.Tensor:
        """An inner estimate of the step, given the step's correction (``x0`` itself if none)."""
        return x0 if self.delta is None else x0 + self.delta


def _fit(x: torch.Tensor, hw) -> torch.Tensor:
    """``x`` cropped or zero-padded (bottom/right) to ``hw``: padding of the image is
    where the model saw zeros, and it carries no target."""
    h, w = hw
    x = x[..., :h, :w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph > 0 or pw > 0:
        x = F.pad(x, (0, pw, 0, ph))
    return x


def _to_latent_grid(weight: torch.Tensor, latent_hw) -> torch.Tensor:
    """Pixel weights [B,1,H,W] -> the mean over each 8x8 block, at the latent size."""
    h, w = latent_hw
    return F.avg_pool2d(_fit(weight, (8 * h, 8 * w)), 8)
