"""`diffbir serve` with a short video, end to end in a real headless Chromium (issue #29).

The browser uploads a 6-frame 24 fps clip, restores it with the tiny random-weight
release (2 steps, no CFG), and checks what a user sees: the per-frame progress, the
summary line, the restored clip playing in the page's video player, and a download
that is an H.264 MP4 with the upload's frame count and frame rate at x4. A clip
uploaded together with a photo is refused with the page's one-line message, before any
model loads. It leaves a screenshot at ``artifacts/ui/video_after_run.png``.

Needs what ``test_app_browser.py`` needs (gradio, playwright, Debian's chromium) and PyAV.
"""

from __future__ import annotations

import fractions
import io

import numpy as np
import pytest
from _browser import (
    ARTIFACTS,
    MARKS,
    RUN_TIMEOUT_MS,
    browser_page,
    fewest_steps,
    progress_seen,
    tiny_ui,
    watch_progress,
)
from PIL import Image

av = pytest.importorskip("av", reason="needs PyAV (the video extra)")

from video_clips import moving_frames  # noqa: E402

SCREENSHOT = ARTIFACTS / "video_after_run.png"
FRAMES, RATE, WIDTH, HEIGHT = 6, 24, 48, 32

pytestmark = MARKS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The UI on a free loopback port, loading the tiny release on first use."""
    with tiny_ui(tmp_path_factory) as url:
        yield url


def _clip(path):
    """A 6-frame 24 fps H.264 clip of a texture moving right, written as the CLI writes."""
    from diffbir.video.io import FrameWriter

    frames = moving_frames(FRAMES, width=WIDTH, height=HEIGHT)
    with FrameWriter(
        path, codec="h264", quality=10, width=WIDTH, height=HEIGHT,
        time_base=fractions.Fraction(1, RATE), rate=fractions.Fraction(RATE),
    ) as writer:  # fmt: skip
        for number, rgb in enumerate(frames):
            writer.write(rgb, number)
    return path


def _frames_and_rate(data: bytes) -> tuple[str, int, fractions.Fraction, tuple[int, int], float]:
    """(codec, decoded frames, average rate, (width, height), pixel spread) of a clip."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        codec, rate = stream.codec_context.name, stream.average_rate
    height, width = frames[0].shape[:2]
    return codec, len(frames), rate, (width, height), float(np.std(frames))


def test_a_short_video_in_the_browser(server, tmp_path):
    clip = _clip(tmp_path / "street.mp4")
    photo = tmp_path / "photo.png"
    Image.fromarray(moving_frames(1, width=WIDTH, height=HEIGHT)[0]).save(photo)
    # The upload is what the page is checked against: 6 frames at 24 fps.
    assert _frames_and_rate(clip.read_bytes())[1:4] == (FRAMES, RATE, (WIDTH, HEIGHT))

    with browser_page(tmp_path / "profile", server) as page:
        # A clip with a photo: one line saying what to do, no model loaded, no traceback.
        page.locator("#inputs input[type=file]").set_input_files([str(clip), str(photo)])
        page.locator("#inputs [aria-label='photo.png']").wait_for()
        watch_progress(page)
        page.locator("#run").click()
        error = page.locator(".toast-body", has_text="upload one video on its own")
        error.first.wait_for(timeout=RUN_TIMEOUT_MS)
        assert "one clip per run" in error.first.inner_text()
        assert "loading" not in progress_seen(page)
        text = page.locator("body").inner_text()
        assert "Traceback" not in text and "internal error" not in text
        assert "restored" not in page.locator("#status").inner_text()
        assert page.locator("#video video").count() == 0

        # The clip alone: restored frame by frame, shown, and served.
        page.reload()
        page.locator("#inputs input[type=file]").set_input_files([str(clip)])
        page.locator("#inputs [aria-label='street.mp4']").wait_for()
        fewest_steps(page)
        watch_progress(page)
        page.locator("#run").click()
        status = page.locator("#status")
        status.get_by_text(f"{FRAMES} frames restored").wait_for(timeout=RUN_TIMEOUT_MS)
        summary = status.inner_text()
        assert summary.startswith("street.mp4: 6 frames restored in "), summary
        assert "1 scene(s)" in summary and "frames 192x128 px" in summary, summary
        seen = progress_seen(page)
        assert "loading the v2.1 sr models" in seen, seen
        assert f"restoring street.mp4: frame {FRAMES}/{FRAMES}" in seen, seen

        player = page.locator("#video video").first
        player.wait_for(state="visible")
        # Chromium decoded the MP4's header: the page shows a playable clip.
        page.wait_for_function(
            "(el) => el.readyState >= 1 && el.videoWidth > 0", arg=player.element_handle()
        )
        assert player.evaluate("(el) => [el.videoWidth, el.videoHeight]") == [192, 128]
        assert player.evaluate("(el) => el.duration") == pytest.approx(FRAMES / RATE, abs=0.05)
        assert page.locator("#compare img, #stage1 img, #gallery img").count() == 0

        link = page.locator("#download a[download]").first
        assert link.get_attribute("download") == "street_diffbir.mp4"
        response = page.request.get(link.get_attribute("href"))
        assert response.ok
        codec, frames, rate, size, spread = _frames_and_rate(response.body())
        assert (codec, frames, rate, size) == ("h264", FRAMES, RATE, (192, 128))
        assert spread > 1.0  # pictures, not blanks

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
