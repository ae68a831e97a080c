"""Training-free temporal consistency: the previous frame's latents, warped by the input's
optical flow, fused into the current frame's where the flow is reliable.

:class:`LatentPropagation` is a latent hook (:class:`diffbir.restore.base.LatentHook`):
a restorer calls it on every clean-latent estimate ``x0`` it forms (each sampler step of
DiffBIR, through the same seam as latent image guidance; HYPIR's one step), with the
step's model timestep. It keeps this frame's (fused) estimate of every step and, for the
next frame, warps the estimate of the same step onto it with the backward flow between
the two input frames (:mod:`diffbir.video.flow`) and blends

    x0 <- x0 + strength * mask * (warp(x0_prev) - x0)

where ``mask`` (the forward-backward consistency mask, averaged onto the latent grid)
is 1 where the flow can be trusted. Because the fused estimate is what is remembered,
detail propagates recurrently from the first frame of a scene (in the manner of
Upscale-A-Video's flow-guided latent propagation and DiffIR2VR-Zero's latent warping);
every frame also starts from the same noise (one seed, one stream per frame), so the
parts the flow cannot reach are restored alike. A scene cut (or ``motion=None``) starts
afresh. Only timesteps ``stop < t < start`` are fused (all by default).

The latents alone leave flicker that the VAE's decoder and the colour fix bring back:
decoding a latent shifted by a fraction of its 8-pixel grid is not the shifted decoded
frame. :class:`OutputFusion` therefore also fuses the decoded frames, the same way, at
full resolution:

    out <- out + output_strength * mask * (warp(out_prev) - out)

with the previous *fused* output (a recurrent filter along the flow, reset at cuts), in
the manner of the post-processing of Lai et al. (2018, "Learning blind video temporal
consistency"), which needs no training when the flow and the mask are given. On the
issue's test clip (``benchmarks/bench_video.py``) the two together bring the warping
error to about a fifth of frame by frame's, with a higher PSNR (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from diffbir.video.flow import Motion, resize_motion, warp_image


def warp_latent(x: torch.Tensor, flow: np.ndarray) -> torch.Tensor:
    """``x`` ([B, C, h, w]) sampled at ``p + flow(p)`` (``flow`` [h, w, 2] in latent
    pixels), bilinear, borders replicated."""
    b, _, h, w = x.shape
    flow_t = torch.as_tensor(flow, dtype=torch.float32, device=x.device)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=x.device),
        torch.arange(w, dtype=torch.float32, device=x.device),
        indexing="ij",
    )
    gx = (xs + flow_t[..., 0] + 0.5) * (2.0 / w) - 1.0
    gy = (ys + flow_t[..., 1] + 0.5) * (2.0 / h) - 1.0
    grid = torch.stack([gx, gy], dim=-1)[None].expand(b, -1, -1, -1)
    out = F.grid_sample(
        x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.to(x.dtype)


class LatentPropagation:
    """The latent hook of a clip (see the module's description). Call :meth:`next_frame`
    before each frame is restored; the restorer then calls the object on each estimate."""

    def __init__(self, strength: float = 0.9, start: int = 1001, stop: int = -1) -> None:
        self.strength = float(strength)
        self.start, self.stop = int(start), int(stop)
        self._previous: dict[int, torch.Tensor] = {}
        self._current: dict[int, torch.Tensor] = {}
        self._motion: Motion | None = None
        self.fused_steps = 0  # estimates fused in the current frame (for tests and notes)

    def next_frame(self, motion: Motion | None) -> None:
        """The next frame is about to be restored; ``motion`` against the previous one,
        or ``None`` (the first frame, a scene cut, propagation off for it)."""
        self._previous = self._current if motion is not None else {}
        self._current = {}
        self._motion = motion
        self.fused_steps = 0

    def reset(self) -> None:
        """Forget everything (a new clip)."""
        self._previous, self._current, self._motion = {}, {}, None

    def __call__(self, x0: torch.Tensor, t: int, content_hw: tuple[int, int]) -> torch.Tensor:
        key = int(t)
        previous = self._previous.get(key)
        if (
            previous is not None
            and self._motion is not None
            and self.strength > 0
            and self.stop < key < self.start
            and previous.shape == x0.shape
        ):
            x0 = self._fuse(x0, previous, content_hw)
            self.fused_steps += 1
        self._current[key] = x0.detach().clone()
        return x0

    def _fuse(self, x0: torch.Tensor, previous: torch.Tensor, content_hw) -> torch.Tensor:
        h, w = (min(a, b) for a, b in zip(content_hw, x0.shape[-2:]))
        flow, mask = resize_motion(self._motion, (h, w))
        weight = torch.zeros((1, 1, *x0.shape[-2:]), dtype=torch.float32, device=x0.device)
        weight[..., :h, :w] = torch.as_tensor(mask, device=x0.device) * self.strength
        warped = previous.clone()
        warped[..., :h, :w] = warp_latent(previous[..., :h, :w], flow)
        return (x0.float() + weight * (warped.float() - x0.float())).to(x0.dtype)

    # ---------------------------------------------------------------- resume
    def state(self) -> dict[str, torch.Tensor]:
        """The last frame's estimates, by timestep (saved with a finished chunk)."""
        return {str(k): v.detach().cpu() for k, v in self._current.items()}

    def load_state(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        """Continue after the frame whose :meth:`state` this is."""
        self._current = {int(k): v.to(device) for k, v in state.items()}
        self._previous, self._motion = {}, None


class OutputFusion:
    """The decoded frames fused along the flow (see the module's description): call
    :meth:`__call__` on each restored frame (uint8 ``[H, W, 3]``) with its
    :class:`~diffbir.video.flow.Motion` against the previous input frame, or ``None`` at
    the first frame of a scene; it returns the frame to write and remembers it."""

    def __init__(self, strength: float = 0.5) -> None:
        self.strength = float(strength)
        self._previous: np.ndarray | None = None

    def __call__(self, frame: np.ndarray, motion: Motion | None) -> np.ndarray:
        previous = self._previous
        if (
            motion is not None
            and previous is not None
            and self.strength > 0
            and previous.shape == frame.shape
        ):
            flow, mask = resize_motion(motion, frame.shape[:2])
            current = frame.astype(np.float32)
            warped = warp_image(previous.astype(np.float32), flow)
            weight = (mask * self.strength)[..., None]
            frame = np.clip(current + weight * (warped - current) + 0.5, 0, 255)
            frame = frame.astype(np.uint8)
        self._previous = frame
        return frame

    def state(self) -> torch.Tensor | None:
        """The last written frame (saved with a finished chunk), or None."""
        return None if self._previous is None else torch.from_numpy(self._previous.copy())

    def load_state(self, state: torch.Tensor | None) -> None:
        """Continue after the frame whose :meth:`state` this is."""
        self._previous = None if state is None else state.numpy().copy()
