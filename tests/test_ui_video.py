"""The web UI's short videos (issue #29), without a browser: an uploaded clip routes to
the clip loop, long clips and mixed uploads are refused in one line before any model
loads, the result is an MP4 with the source's frames, timestamps and audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from video_clips import audio_packets, moving_frames, video_pts, write_clip  # noqa: E402

from diffbir.config.presets import get_preset  # noqa: E402
from diffbir.errors import DiffBIRError  # noqa: E402
from diffbir.restore.base import RestoreResult  # noqa: E402
from diffbir.restore.prompts import ImagePrompt  # noqa: E402
from diffbir.ui.core import FormValues, PipelineCache  # noqa: E402
from diffbir.ui.video import restore_video_upload, video_upload  # noqa: E402


class ClipRestorer:
    """Returns each frame inverted; counts the frames and the latent hooks it is given."""

    device = torch.device("cpu")

    def __init__(self):
        self.frames = 0
        self.hooks = 0

    def resolve(self, options):
        from diffbir.config.settings import resolve

        return resolve(get_preset("v2.1", "sr"), options)

    def image_prompts(self, lq, options, given=None):
        if given and given[0] is not None:
            return [given[0]]
        return [ImagePrompt("a film still", "", "")]

    def prepare_image_prompts(self, prompts, *, drop_text_encoder=False):
        pass

    def restore(self, lq, options, prompts=None, *, latent_hook=None):
        self.frames += 1
        self.hooks += latent_hook is not None
        return RestoreResult(image=1 - lq, stage1=lq, config=options, prompts=list(prompts))


class Loads:
    def __init__(self):
        self.loads = []
        self.restorer = ClipRestorer()

    def __call__(self, version, task):
        self.loads.append((version, task))
        return self.restorer


FORM = FormValues(upscale=1, captioner="none", caption="an old film")


def test_an_uploaded_clip_is_restored_into_an_mp4_with_its_timestamps_and_audio(tmp_path):
    src = tmp_path / "home movie.mov"
    frames = moving_frames(6)
    pts = write_clip(src, frames)
    factory = Loads()
    seen = []
    clip = video_upload([str(src)])
    video = restore_video_upload(
        clip, FORM, PipelineCache(factory), tmp_path / "out", max_pixels=10**6,
        report=lambda fraction, text: seen.append((fraction, text)),
    )  # fmt: skip
    assert video.result.suffix == ".mp4" and video.result.exists()
    assert (video.frames, video.scenes, video.size) == (6, 1, (32, 48))
    assert factory.loads == [("v2.1", "sr")] and factory.restorer.frames == 6
    assert factory.restorer.hooks == 6  # temporal consistency on
    assert video_pts(video.result) == pytest.approx([t / 1000 for t in pts])
    assert audio_packets(video.result) == audio_packets(src)
    assert video.caption == "an old film"
    assert seen[-1] == (1.0, "done") and any("frame 6/6" in text for _, text in seen)
    assert "6 frames restored" in video.summary()

    import av

    with av.open(str(video.result)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert np.abs(first.astype(int) - (255 - frames[0].astype(int))).mean() < 12


def test_long_clips_and_mixed_uploads_are_refused_before_any_model_loads(tmp_path):
    src = tmp_path / "long.mp4"
    write_clip(src, moving_frames(6), audio=False)
    factory = Loads()
    with pytest.raises(DiffBIRError) as info:
        restore_video_upload(
            src, FORM, PipelineCache(factory), tmp_path / "out", max_frames=4, max_pixels=10**6
        )
    message = str(info.value)
    assert message.startswith("long.mp4: 6 frames") and "at most 4 frames" in message
    assert "diffbir restore long.mp4" in message and "\n" not in message
    with pytest.raises(DiffBIRError, match="megapixels a frame"):
        restore_video_upload(src, FORM, PipelineCache(factory), tmp_path, max_pixels=100)
    assert factory.loads == []
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"")
    assert video_upload([photo]) is None  # images go to the photo path
    with pytest.raises(DiffBIRError, match="one video on its own"):
        video_upload([src, photo])
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(DiffBIRError, match="broken.mp4"):
        restore_video_upload(bad, FORM, PipelineCache(factory), tmp_path, max_pixels=10**6)
