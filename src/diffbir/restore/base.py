"""What every restorer is to its callers: the :class:`Restorer` protocol and its result.

The CLI, the web UI, the run loop and whole-photo runs call restorers through this
protocol only, so a model family is added by writing one module that implements it
and one entry in :mod:`diffbir.restore.factory`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing this module stays free of torch
    import torch

    from diffbir.config.settings import RestoreOptions, RunConfig
    from diffbir.restore.plan import TilePlan
    from diffbir.restore.prompts import ImagePrompt


@dataclass
class RestoreResult:
    """Restored images and what led to them.

    ``image`` holds exact 8-bit levels (k / 255), the release's quantisation;
    ``intermediates`` the condition latent, the start point ``x_T`` and the
    sampler's result ``z`` (latents are small); ``faces`` (whole-photo runs) per
    image the faces that were pasted in."""

    image: torch.Tensor  # [B*n_samples,3,H,W] float32 in [0,1], the requested output size
    stage1: torch.Tensor  # [B*n_samples,3,h,w] the cleaner's output (the condition), unclamped
    timings: dict[str, float] = field(default_factory=dict)
    tiles: TilePlan | None = None
    config: RunConfig | None = None
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str | None] = field(default_factory=list)  # per image: a remark or None
    prompts: list[ImagePrompt] = field(default_factory=list)  # per image: what it was given
    faces: list[list] = field(default_factory=list)  # per image: list[RestoredFace]


class LatentHook(Protocol):
    """Called by a restorer on every clean-latent estimate ``x0`` ([B,4,h,w], scaled by
    0.18215) it forms, at model timestep ``t``; returns the estimate to go on with.
    ``content_hw`` is the part of the latent grid the image covers (top-left; the rest is
    padding). Video runs fuse the previous frame's latents here
    (:class:`diffbir.video.temporal.LatentPropagation`); ``None`` changes nothing."""

    def __call__(self, x0: torch.Tensor, t: int, content_hw: tuple[int, int]) -> torch.Tensor: ...


def hooked_guidance(guidance: Callable | None, hook: LatentHook | None, content_hw):
    """``guidance(x0, t[, step_scale])`` followed by ``hook`` (the denoiser's one seam
    for corrections of the x0 estimate, which every sampler calls once per step), or
    ``guidance`` itself without a hook."""
    if hook is None:
        return guidance

    def guided(x0, t, *step_scale):
        if guidance is not None:
            x0 = guidance(x0, t, *step_scale)
        return hook(x0, int(t), content_hw)

    return guided


@runtime_checkable
class Restorer(Protocol):
    """A loaded model family that restores batches of images.

    A run resolves its options once (:meth:`resolve`, or
    :func:`diffbir.restore.factory.resolve_run` before anything is loaded) and hands
    the frozen :class:`~diffbir.config.settings.RunConfig` to every later call."""

    device: torch.device

    def resolve(self, options: RestoreOptions | None = None) -> RunConfig:
        """The run's frozen settings: this restorer's defaults, then ``options``."""
        ...

    def image_prompts(
        self, lq: torch.Tensor, config: RunConfig, given: list[ImagePrompt | None] | None = None
    ) -> list[ImagePrompt]:
        """Each image's prompts: ``given`` where there is one, else made (captioned)."""
        ...

    def prepare_image_prompts(
        self, prompts: list[ImagePrompt], *, drop_text_encoder: bool = False
    ) -> None:
        """Encode every prompt now; optionally free the text encoder afterwards."""
        ...

    def free_captioner(self) -> None:
        """Free the captioner's weights (before the diffusion stage)."""
        ...

    def restore(
        self,
        lq: torch.Tensor,
        config: RunConfig | RestoreOptions | None = None,
        prompts: list[ImagePrompt] | None = None,
        *,
        latent_hook: LatentHook | None = None,
    ) -> RestoreResult:
        """Restore a batch ``lq`` ([B,3,H,W] RGB in [0,1]); ``latent_hook`` sees (and may
        change) every clean-latent estimate."""
        ...

    def compile(self, backend: str = "inductor", *, mode: str | None = None) -> Any:
        """``torch.compile`` the denoising network in place."""
        ...

    def loaded_models(self) -> dict[str, str]:
        """What this restorer loaded: ``part -> description`` (files, sizes, dtype)."""
        ...


@dataclass(frozen=True)
class RestorerEntry:
    """One model family in the factory's table: the releases and tasks it serves, how
    its settings are resolved before anything is loaded, and how it is loaded."""

    name: str
    versions: tuple[str, ...]
    tasks: tuple[str, ...]
    #: ``(version, task, options, device_type, dtype) -> RunConfig``
    resolve: Callable[..., RunConfig]
    #: ``(version, task, **loader) -> Restorer``
    load: Callable[..., Restorer]
