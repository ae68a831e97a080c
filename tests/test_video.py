"""Video (issue #29): PyAV round trips, flow and warping, latent propagation, the clip
loop with resume, and the command on mixed batches, with the tiny release."""

from __future__ import annotations

import fractions
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from video_clips import audio_packets, moving_frames, video_pts, write_clip  # noqa: E402

from diffbir.config.settings import RestoreOptions, VideoOptions  # noqa: E402
from diffbir.video import flow as vflow  # noqa: E402
from diffbir.video import io as vio  # noqa: E402
from diffbir.video import run as vrun  # noqa: E402
from diffbir.video.temporal import LatentPropagation, warp_latent  # noqa: E402

# Small and quick: 8x8 latents, 3 steps.
FAST = dict(min_side=64, steps=3, captioner="none", upscale=1)


def _decoded(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


# ------------------------------------------------------------------------------- io
def test_round_trip_keeps_frames_timestamps_audio_and_turns_upright(tmp_path):
    frames = moving_frames(7)
    src = tmp_path / "clip.mp4"
    pts = write_clip(src, frames, rotation=90)
    info = vio.probe(src)
    assert (info.width, info.height, info.rotation, info.audio) == (32, 48, 90, ("aac",))
    read = list(vio.read_frames(src))
    assert len(read) == 7 and read[0].rgb.shape == (48, 32, 3)
    assert [round(f.time * 1000) for f in read] == pts  # 40/40/80 ms: a variable rate
    upright = np.rot90(frames[0], 1).astype(int)
    assert np.abs(read[0].rgb.astype(int) - upright).mean() < 8  # x264 at CRF 10

    out = tmp_path / "out.mp4"
    writer = vio.FrameWriter(
        out, codec="h264", quality=18, width=32, height=48, time_base=info.time_base,
        rate=info.rate, info=info, audio_from=src,
    )  # fmt: skip
    with writer:
        for frame in read:
            writer.write(frame.rgb, frame.pts)
        for packet in writer.audio_packets():
            writer.mux_audio(packet, 0.0)
    assert video_pts(out) == pytest.approx([t / 1000 for t in pts])
    assert audio_packets(out) == audio_packets(src) and audio_packets(src)
    assert vio.probe(out).rotation == 0  # turned in the pixels, not tagged


def test_colour_tags_are_read_and_written(tmp_path):
    frames = moving_frames(3)
    src = tmp_path / "bt709.mp4"
    write_clip(src, frames, audio=False, colorspace="ITU709")
    info = vio.probe(src)
    assert info.colorspace == 1 and info.color_range == 1
    read = list(vio.read_frames(src))
    assert np.abs(read[1].rgb.astype(int) - frames[1]).mean() < 8  # decoded as BT.709
    out = tmp_path / "out.mkv"
    with vio.FrameWriter(
        out, codec="ffv1", quality=None, width=48, height=32,
        time_base=info.time_base, rate=info.rate, info=info,
    ) as writer:  # fmt: skip
        for frame in read:
            writer.write(frame.rgb, frame.pts)
    again = vio.probe(out)
    assert again.colorspace == 1 and again.color_range == 1
    back = list(vio.read_frames(out))
    assert np.abs(back[1].rgb.astype(int) - read[1].rgb).mean() < 1.5


def test_time_range_rate_and_count(tmp_path):
    src = tmp_path / "clip.mkv"
    pts = write_clip(src, moving_frames(12), pts=[k * 40 for k in range(12)], audio=False)
    times = [f.time for f in vio.read_frames(src, start=0.1, end=0.3)]
    assert times == pytest.approx([0.12, 0.16, 0.2, 0.24, 0.28])
    assert len(list(vio.read_frames(src, max_rate=12.5))) == 6  # every other frame
    assert len(list(vio.read_frames(src, max_frames=4))) == 4
    assert len(pts) == 12


def test_a_bad_or_truncated_video_is_one_line(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 64)
    with pytest.raises(vio.VideoError, match="bad.mp4: not a video"):
        vio.probe(bad)
    src = tmp_path / "clip.mkv"
    write_clip(src, moving_frames(20, 64, 64), audio=False)
    cut = tmp_path / "cut.mkv"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    frames = []
    with pytest.raises(vio.VideoError, match="cut.mkv") as error:
        for frame in vio.read_frames(cut):
            frames.append(frame)
        raise vio.VideoError(f"{cut.name}: decoded {len(frames)} frames without error")
    assert "\n" not in str(error.value) and len(frames) < 20


def test_missing_pyav_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(vio.VideoError, match=r"diffbir\[video\]"):
        vio.probe(tmp_path / "x.mp4")


# ----------------------------------------------------------------------------- flow
def test_flow_finds_a_known_shift_and_the_warp_undoes_it():
    frames = moving_frames(3, 96, 64)
    gray = [vflow.flow_gray(f) for f in frames]
    m = vflow.motion(gray[0], gray[1])
    inner = m.backward[8:-8, 8:-8]
    assert inner[..., 0].mean() == pytest.approx(-1.0, abs=0.1)  # came from 1 px left
    assert abs(inner[..., 1].mean()) < 0.1
    assert m.matched > 0.9 and not vflow.is_cut(m, 0.3)
    warped = vflow.warp_image(frames[0], m.backward)
    error = np.abs(warped[:, 4:-4].astype(int) - frames[1][:, 4:-4]).mean()
    assert error < 1.0 < np.abs(frames[0].astype(int) - frames[1]).mean()


def test_warp_latent_moves_by_whole_pixels_and_a_cut_is_found():
    x = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(1, 2, 6, 8)
    flow = np.zeros((6, 8, 2), np.float32)
    flow[..., 0] = -2.0  # each pixel from 2 to its left
    out = warp_latent(x, flow)
    assert torch.allclose(out[..., 2:], x[..., :-2], atol=1e-4)
    other = (np.random.default_rng(3).random((64, 96, 3)) * 255).astype(np.uint8)
    m = vflow.motion(vflow.flow_gray(moving_frames(1, 96, 64)[0]), vflow.flow_gray(other))
    assert vflow.is_cut(m, 0.3)


def test_consistency_mask_drops_disagreeing_flow():
    backward = np.zeros((16, 16, 2), np.float32)
    forward = np.zeros((16, 16, 2), np.float32)
    forward[:, 8:, 0] = 5.0  # the right half's forward flow does not return
    mask = vflow.consistency_mask(backward, forward)
    assert mask[:, :8].all() and not mask[:, 8:].any()


def test_propagation_fuses_the_previous_estimate_where_reliable():
    prop = LatentPropagation(strength=1.0)
    zero = vflow.Motion(np.zeros((4, 4, 2), np.float32), np.ones((4, 4), np.float32), 1.0)
    prop.next_frame(None)
    first = torch.ones(1, 4, 4, 4)
    assert prop(first, 500, (4, 4)) is first
    prop.next_frame(zero)
    fused = prop(torch.zeros(1, 4, 4, 4), 500, (4, 4))
    assert torch.allclose(fused, first) and prop.fused_steps == 1
    prop.next_frame(None)  # a cut
    again = torch.zeros(1, 4, 4, 4)
    assert prop(again, 500, (4, 4)) is again
    outside = LatentPropagation(strength=1.0, start=400)
    outside.next_frame(None)
    outside(first, 500, (4, 4))
    outside.next_frame(zero)
    assert outside(again, 500, (4, 4)) is again  # not within (stop, start)


# ------------------------------------------------------------------------ the clip loop
def _clip(tmp_path, n=6, name="clip.mp4", cut_at=None, audio=True):
    frames = moving_frames(n)
    if cut_at is not None:
        frames[cut_at:] = moving_frames(n - cut_at, seed=9)
    src = tmp_path / name
    pts = write_clip(src, frames, audio=audio)
    return src, pts


def test_temporal_on_fuses_and_differs_from_frame_by_frame(pipe, tmp_path):
    src, pts = _clip(tmp_path, n=5, cut_at=3)
    config = pipe.resolve(RestoreOptions(**FAST))
    outs = {}
    for temporal in (False, True):
        out = tmp_path / str(temporal) / "clip.mkv"
        video = VideoOptions(temporal=temporal, codec="ffv1", chunk_frames=2)
        result = vrun.restore_clip(pipe, config, video, vrun.ClipSource(src), out, progress=False)
        assert result.frames == 5 and out.exists() and not vrun.parts_folder(out).exists()
        assert video_pts(out) == pytest.approx([t / 1000 for t in pts])
        assert audio_packets(out) == audio_packets(src)
        outs[temporal] = (_decoded(out), result)
    off, on = outs[False][0], outs[True][0]
    assert np.array_equal(off[0], on[0])  # the first frame has nothing to follow
    assert not np.array_equal(off[1], on[1])
    assert outs[True][1].cuts == [0, 3]  # the cut reset propagation
    assert np.array_equal(off[3], on[3])  # a fresh start: as frame by frame
    assert outs[False][1].cuts == [0]


def test_an_interrupted_clip_resumes_from_its_last_chunk(pipe, tmp_path):
    src, _ = _clip(tmp_path, n=5)
    config = pipe.resolve(RestoreOptions(**FAST))
    video = VideoOptions(codec="ffv1", chunk_frames=2)
    whole = tmp_path / "whole" / "clip.mkv"
    vrun.restore_clip(pipe, config, video, vrun.ClipSource(src), whole, progress=False)
    out = tmp_path / "out" / "clip.mkv"

    def stop(n):
        if n == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vrun.restore_clip(
            pipe, config, video, vrun.ClipSource(src), out, progress=False, on_frame=stop
        )
    assert not out.exists() and list(out.parent.iterdir()) == [vrun.parts_folder(out)]
    assert (vrun.parts_folder(out) / "chunk_000000.mkv").exists()
    result = vrun.restore_clip(
        pipe, config, video, vrun.ClipSource(src), out, progress=False, resume=True
    )
    assert (result.frames, result.restored) == (5, 3)  # the first chunk was kept
    for a, b in zip(_decoded(out), _decoded(whole), strict=True):
        assert np.array_equal(a, b)  # as if never stopped (its latents were kept too)


def test_hypir_restores_a_clip_through_the_same_hook(release, single_thread, tmp_path):
    from diffbir import load_restorer

    weights, models = release
    hypir = load_restorer(
        "hypir", "sr", weights_dir=weights, model_config=models, download=False, progress=False
    )
    src, _ = _clip(tmp_path, n=3, audio=False)
    config = hypir.resolve(RestoreOptions(captioner="none", upscale=1, latent_tile=256))
    decoded = {}
    for temporal in (False, True):
        out = tmp_path / str(temporal) / "clip.mkv"
        video = VideoOptions(temporal=temporal, codec="ffv1")
        vrun.restore_clip(hypir, config, video, vrun.ClipSource(src), out, progress=False)
        decoded[temporal] = _decoded(out)
    assert len(decoded[True]) == 3
    assert np.array_equal(decoded[False][0], decoded[True][0])
    assert not np.array_equal(decoded[False][2], decoded[True][2])


# ------------------------------------------------------------------------ the command
def _args(release, out, *inputs):
    weights, models = release
    args = ["restore", *map(str, inputs), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(models), "--no-download", "-q", "--min-side", "64"]
    return args + ["--steps", "3", "--captioner", "none", "--chunk-frames", "2"]


def test_a_batch_mixes_images_and_videos_and_goes_on_past_a_bad_one(
    release, single_thread, tmp_path, capsys
):
    from PIL import Image

    from diffbir.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    _clip(folder, n=3)
    (folder / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 64)
    Image.fromarray(moving_frames(1)[0]).save(folder / "still.png")
    out = tmp_path / "out"
    assert main(_args(release, out, folder)) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "bad.mp4" in line] == [
        f"diffbir: skipped {folder / 'bad.mp4'}: not a video FFmpeg can read "
        "(Invalid data found when processing input)"
    ]
    assert "2 restored, 1 failed" in err
    assert (out / "still.png").exists() and len(video_pts(out / "clip.mp4")) == 3
    assert audio_packets(out / "clip.mp4") == audio_packets(folder / "clip.mp4")
    assert main(_args(release, out, folder / "clip.mp4") + ["--skip-existing"]) == 0
    assert "1 skipped" in capsys.readouterr().err


def test_a_folder_of_frames_to_png_frames(release, single_thread, tmp_path):
    from PIL import Image

    from diffbir.cli import main

    frames = tmp_path / "reel"
    frames.mkdir()
    for k, rgb in enumerate(moving_frames(3)):
        Image.fromarray(rgb).save(frames / f"f{k + 1}.png")
    out = tmp_path / "out"
    args = _args(release, out, frames) + ["--frames", "--video-codec", "png", "--temporal", "off"]
    assert main(args + ["--frames-rate", "12.5"]) == 0
    written = sorted(p.name for p in (out / "reel").iterdir())
    assert written == ["frame_000001.png", "frame_000002.png", "frame_000003.png", "timestamps.txt"]
    stamps = (out / "reel" / "timestamps.txt").read_text().split("\n")[1:4]
    assert [float(s) for s in stamps] == [0.0, 80.0, 160.0]


def test_video_flags_are_checked_in_one_line(release, tmp_path, capsys):
    from diffbir.cli import main

    src, _ = _clip(tmp_path, n=2, audio=False)
    for flag, message in (
        (["--temporal-strength", "2"], "--temporal-strength must be in [0, 1]"),
        (["--start", "3", "--end", "1"], "--end must be after --start"),
        (["--video-quality", "60"], "--video-quality (CRF) must be within 0..51"),
    ):
        assert main(_args(release, tmp_path / "o", src) + flag) != 0
        assert message in capsys.readouterr().err


def test_output_names(tmp_path):
    video = VideoOptions()
    clip = vrun.ClipSource(tmp_path / "a.webm")
    assert vrun.output_for(clip, tmp_path, video).name == "a.mp4"
    assert vrun.output_for(vrun.ClipSource(tmp_path / "b.mov"), tmp_path, video).name == "b.mov"
    ffv1 = VideoOptions(codec="ffv1")
    assert vrun.output_for(clip, tmp_path, ffv1).name == "a.mkv"
    frames = vrun.ClipSource(tmp_path / "reel", frames_folder=True)
    assert vrun.output_for(frames, tmp_path, VideoOptions(codec="png")).name == "reel"
    assert fractions.Fraction(1, 25) == 1 / fractions.Fraction(25)


class _CaptionsEachScene:
    """A restorer that returns its input and captions a frame by its mean level."""

    device = torch.device("cpu")

    def image_prompts(self, lq, config, given=None):
        from diffbir.restore.prompts import ImagePrompt

        if given and given[0] is not None:
            return [given[0]]
        caption = f"level {round(float(lq.mean()) * 100)}"
        return [ImagePrompt(caption, "", caption)]

    def prepare_image_prompts(self, prompts):
        pass

    def restore(self, lq, config, prompts, latent_hook=None):
        from diffbir.restore.base import RestoreResult

        self.seen = [*getattr(self, "seen", []), prompts[0].caption]
        return RestoreResult(image=lq, stage1=lq, config=config, prompts=prompts)


@pytest.mark.parametrize("temporal", [False, True])
def test_captions_per_scene_follow_the_cuts(pipe, tmp_path, temporal):
    src, _ = _clip(tmp_path, n=5, cut_at=3, audio=False)
    config = pipe.resolve(RestoreOptions(**FAST))
    restorer = _CaptionsEachScene()
    runs = {}
    for captions in ("clip", "scene"):
        video = VideoOptions(temporal=temporal, codec="ffv1", captions=captions)
        out = tmp_path / captions / "clip.mkv"
        runs[captions] = vrun.restore_clip(
            restorer, config, video, vrun.ClipSource(src), out, progress=False
        )
    scene = runs["scene"]
    assert scene.cuts == [0, 3] and len(scene.prompts) == 2
    assert scene.prompts[0].caption != scene.prompts[1].caption
    assert restorer.seen[5:] == [scene.prompts[0].caption] * 3 + [scene.prompts[1].caption] * 2
    assert len(runs["clip"].prompts) == 1  # one caption for the clip
    assert restorer.seen[:5] == [runs["clip"].prompts[0].caption] * 5
