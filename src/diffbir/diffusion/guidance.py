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

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError

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


class LatentGuidance:
    """Moves each step's z0_hat toward a target (latent or pixel space); see the module doc.

    Call it as ``guidance(x0_hat, t) -> x0_hat'`` with t the ORIGINAL timestep (int).
    Outside the range, or with ``scale == 0``, it returns ``x0_hat`` itself (the
    very same tensor, so a sampler's result is bitwise that of no guidance).
    Holds no mutable state: one instance can serve many runs.
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
            if loss == "weighted_mse":
                raise ConfigError("weighted_mse guidance is defined in pixel space only")
            if target is None:
                raise ConfigError("latent guidance needs the target latent")
        else:
            if decode is None:
                raise ConfigError("pixel-space guidance needs a decode function")
            if pixel_target is None:
                raise ConfigError("pixel-space guidance needs pixel_target (an image in [0, 1])")
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
        self.weight = None
        if loss == "weighted_mse":
            self.weight = edge_weight_map(self.pixel_target.float())

    def active(self, t: int) -> bool:
        """Whether guidance applies at original timestep ``t`` (``stop < t + 1 < start``)."""
        return self.scale != 0.0 and self.stop < int(t) + 1 < self.start

    def distance(self, x0: torch.Tensor) -> torch.Tensor:
        """D per sample ([B]): mean (weighted) squared error of f(x0) to the target."""
        if self.space == "latent":
            pred, target = x0, self.target.to(device=x0.device, dtype=x0.dtype)
        else:
            pred = self.decode(x0).float() * 2.0 - 1.0
            target = self.pixel_target.to(device=pred.device, dtype=pred.dtype) * 2.0 - 1.0
        err = (pred - target).pow(2)
        if self.weight is not None:
            err = err * self.weight.to(device=err.device, dtype=err.dtype)
        return err.flatten(1).mean(dim=1)

    def __call__(self, x0: torch.Tensor, t: int, step_scale: float = 1.0) -> torch.Tensor:
        """``x0`` after ``repeat`` steps ``x0 -= scale * step_scale * grad D`` (or ``x0`` itself)."""
        if not self.active(t):
            return x0
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "latent image guidance needs autograd: run the sampler under torch.no_grad(), "
                "not torch.inference_mode()"
            )
        z = x0.detach().clone()
        for _ in range(self.repeat):
            with torch.enable_grad():
                z.requires_grad_(True)
                loss = self.distance(z).sum()
                (grad,) = torch.autograd.grad(loss, z)
            z = (z - (self.scale * step_scale) * grad).detach()
        return z
