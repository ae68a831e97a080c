"""The consistency bound of issue #29 on a built clip, with the tiny release: temporal
consistency on must at least halve the warping error of frame by frame, and cost at
most 0.5 dB of per-frame PSNR against the clean frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from video_clips import moving_frames, write_clip  # noqa: E402

from diffbir.config.settings import RestoreOptions, VideoOptions  # noqa: E402
from diffbir.video import consistency  # noqa: E402
from diffbir.video import run as vrun  # noqa: E402

FAST = dict(min_side=64, steps=3, captioner="none", upscale=1)


def _built_clip(n: int = 8, side: int = 64):
    """(clean frames, degraded frames): a texture panning 1 pixel a frame, degraded by a
    blur drawn once and new noise in every frame (film grain)."""
    import cv2

    clean = moving_frames(n, width=side, height=side, seed=3)
    gen = np.random.default_rng(5)
    degraded = []
    for frame in clean:
        blurred = cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 1.2)
        noisy = blurred + gen.normal(0.0, 8.0, frame.shape)
        degraded.append(np.clip(noisy, 0, 255).round().astype(np.uint8))
    return clean, degraded


def _decoded(path):
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_temporal_on_halves_the_warping_error_at_no_cost_in_psnr(pipe, tmp_path):
    clean, degraded = _built_clip()
    src = tmp_path / "built.mkv"
    write_clip(src, degraded, audio=False, codec="ffv1")
    motion = consistency.reference_motion(clean)
    config = pipe.resolve(RestoreOptions(**FAST))
    measured = {}
    for temporal in (False, True):
        out = tmp_path / ("on" if temporal else "off") / "built.mkv"
        video = VideoOptions(temporal=temporal, codec="ffv1")
        with torch.no_grad():
            vrun.restore_clip(pipe, config, video, vrun.ClipSource(src), out, progress=False)
        frames = _decoded(out)
        assert len(frames) == len(clean)
        measured[temporal] = (
            consistency.warping_error(frames, motion),
            consistency.mean_psnr(frames, clean),
        )
    (e_off, psnr_off), (e_on, psnr_on) = measured[False], measured[True]
    assert e_off > 1e-4  # frame by frame flickers (new grain, new detail every frame)
    assert e_on <= 0.5 * e_off, measured
    assert psnr_on >= psnr_off - 0.5, measured


def test_the_measures_of_a_still_and_a_flickering_clip():
    clean, _ = _built_clip(n=4, side=32)
    motion = consistency.reference_motion(clean)
    assert consistency.warping_error(clean, motion) < 2e-4  # the clean clip follows its flow
    assert consistency.mean_psnr(clean, clean) == pytest.approx(120.0)
    gen = np.random.default_rng(0)
    noisy = [np.clip(f + gen.normal(0, 10, f.shape), 0, 255).astype(np.uint8) for f in clean]
    assert consistency.warping_error(noisy, motion) > 10 * consistency.warping_error(clean, motion)
    assert consistency.flicker(clean, clean, motion) == 0.0
    assert consistency.flow_difference(clean, motion) < 0.2


def test_output_fusion_follows_the_flow_where_reliable_and_resets_at_cuts():
    from diffbir.video.flow import Motion
    from diffbir.video.temporal import OutputFusion

    fusion = OutputFusion(strength=1.0)
    first = np.full((16, 16, 3), 200, np.uint8)
    assert fusion(first, None) is first
    still = Motion(np.zeros((8, 8, 2), np.float32), np.ones((8, 8), np.float32), 1.0)
    assert np.array_equal(fusion(np.zeros_like(first), still), first)  # all the previous
    half = OutputFusion(strength=0.5)
    half.load_state(fusion.state())  # resumes after the frame it saved
    assert int(half(np.zeros_like(first), still)[0, 0, 0]) == 100
    assert np.array_equal(half(np.zeros_like(first), None), np.zeros_like(first))  # a cut
