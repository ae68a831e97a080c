"""What the browser tests of ``diffbir serve`` share: Debian's chromium driven through
the ``playwright`` Python package (never Playwright's own browser download), the page
served in this process on a free loopback port with the tiny random-weight release
(``tiny_release.py``), and a record of the progress messages the page shows.

Importing this module skips the importing test module without gradio or playwright;
its tests carry :data:`MARKS` (browser, slow, skipped without ``/usr/bin/chromium``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: on 2 shared CPU cores one tiny restoration takes seconds to a minute.
RUN_TIMEOUT_MS = 240_000

MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (see .ci/run)"
    ),
]
pytest.importorskip("gradio", reason="needs the ui extra (gradio); see .ci/run")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright; see .ci/run")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tiny_ui(tmp_path_factory) -> Iterator[str]:
    """The UI's address, served until the block ends; it loads the tiny release on its
    first run (its own model cache: each test module sees the first load)."""
    from tiny_release import make_tiny_release

    from diffbir.ui.app import build_app, launch

    folder = tmp_path_factory.mktemp("tiny_release")
    model_config = make_tiny_release(folder)
    demo = build_app(
        weights_dir=folder,
        model_config=model_config,
        device="cpu",
        dtype="fp32",
        download=False,
        output_dir=tmp_path_factory.mktemp("ui_out"),
    )
    url = launch(demo, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url
    finally:
        demo.close()


@contextlib.contextmanager
def browser_page(profile: Path, url: str):
    """A new page of a headless chromium with a new, empty profile in ``profile``, at ``url``."""
    with sync_api.sync_playwright() as playwright:
        # A persistent context gives the browser its own profile folder.
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.goto(url)
            yield page
        finally:
            context.close()


def fewest_steps(page) -> None:
    """Two steps, no CFG: enough to exercise every stage quickly on a CPU."""
    page.get_by_text("Sampling", exact=True).click()
    for elem_id, value in (("steps", "2"), ("cfg", "1")):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(value)
        box.press("Enter")


def watch_progress(page) -> None:
    """Record every progress message the page shows from now on (they come and go quickly)."""
    page.evaluate(
        """() => {
            window.seenText = new Set();
            new MutationObserver(() => {
                for (const el of document.querySelectorAll('[data-testid=status-tracker]')) {
                    window.seenText.add(el.textContent.trim());
                }
            }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }"""
    )


def progress_seen(page) -> str:
    """The progress messages recorded since :func:`watch_progress`, joined by `` | ``."""
    return " | ".join(page.evaluate("() => [...window.seenText]"))


def close_toasts(page) -> None:
    """Dismiss the page's toasts (so that a screenshot shows what they cover)."""
    for button in page.locator("button.toast-close").all():
        button.click()
    page.locator(".toast-body").first.wait_for(state="detached")
