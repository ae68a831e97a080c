"""`diffbir serve` end to end: a real headless Chromium drives the page.

The server runs in this process on a free loopback port with the tiny
random-weight release (``tiny_release.py``). The browser uploads a broken file
and a photo, runs a restoration, checks that the broken file is reported in
the page while the photo is restored, that the before/after slider and the
stage-1 view show images, and that the download link serves the full-size
PNG. It leaves a screenshot of the page at ``artifacts/ui/after_run.png``.

Needs gradio, the ``playwright`` Python package and Debian's ``chromium``
(``/usr/bin/chromium``); ``.ci/run`` installs them. Playwright's own browser
download is never used.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from _browser import (
    ARTIFACTS,
    MARKS,
    RUN_TIMEOUT_MS,
    browser_page,
    close_toasts,
    fewest_steps,
    progress_seen,
    tiny_ui,
    watch_progress,
)
from PIL import Image, ImageDraw

SCREENSHOT = ARTIFACTS / "after_run.png"

pytestmark = MARKS


def _photo(path: Path, size: int = 64) -> Path:
    """A small synthetic picture: a sky gradient, a sun and a hill, with noise."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    sky = np.stack([0.35 + 0.3 * y, 0.55 + 0.25 * y, 0.95 - 0.2 * y], axis=-1)
    image = Image.fromarray((sky * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse([size * 0.6, size * 0.1, size * 0.85, size * 0.35], fill=(250, 210, 80))
    draw.polygon(
        [(0, size), (0, size * 0.7), (size * 0.5, size * 0.55), (size, size)], (60, 140, 70)
    )
    noisy = np.asarray(image, dtype=np.float32) + np.random.default_rng(0).normal(
        0, 12, (size, size, 3)
    )
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The UI on a free loopback port, loading the tiny release on first use."""
    with tiny_ui(tmp_path_factory) as url:
        yield url


def test_restore_in_the_browser(server, tmp_path):
    photo = _photo(tmp_path / "holiday.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture at all")

    with browser_page(tmp_path / "profile", server) as page:
        page.locator("#inputs input[type=file]").set_input_files([str(broken), str(photo)])
        page.locator("#inputs [aria-label='holiday.png']").wait_for()
        fewest_steps(page)
        watch_progress(page)
        page.locator("#run").click()

        # The broken upload is reported in the page (a toast and the status)...
        warning = page.locator(".toast-body", has_text="broken.png")
        warning.first.wait_for(timeout=RUN_TIMEOUT_MS)
        # ... and the photo is restored: before/after images and the stage-1 view.
        status = page.locator("#status")
        status.get_by_text("1 restored").wait_for(timeout=RUN_TIMEOUT_MS)
        assert "1 failed" in status.inner_text()
        assert "broken.png: not a recognised image file" in status.inner_text()
        assert "result 256x256 px" in status.inner_text()
        for selector in ("#compare img", "#stage1 img"):
            image = page.locator(selector).first
            image.wait_for(state="visible")
            page.wait_for_function(
                "(el) => el.complete && el.naturalWidth > 0", arg=image.element_handle()
            )
        assert page.locator("#compare img").count() == 2  # before and after
        seen = progress_seen(page)
        assert "loading the v2.1 sr models: Stable Diffusion + ControlNet" in seen, seen
        assert "restoring holiday.png (1/1)" in seen, seen

        link = page.locator("#download a[download]").first
        assert link.get_attribute("download") == "01_holiday_diffbir.png"
        response = page.request.get(link.get_attribute("href"))
        assert response.ok
        with Image.open(io.BytesIO(response.body())) as png:
            assert png.format == "PNG"
            assert png.size == (256, 256)  # x4, full size
            pixels = np.asarray(png.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 1.0  # a picture, not a blank

        # The status line keeps the failure; dismiss the toasts so they cover nothing.
        close_toasts(page)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
