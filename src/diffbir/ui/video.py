"""The web UI's short videos, without the web: an uploaded clip restored through the
clip loop of ``diffbir restore clip.mp4`` (:func:`diffbir.video.run.restore_clip`).

The page takes one clip per run, of at most :data:`DEFAULT_MAX_VIDEO_FRAMES` frames
(a longer one is refused before any model loads, with the command that restores it);
the result is an H.264 MP4 (browsers play it) with the source's timestamps and audio,
temporal consistency on. Nothing here imports gradio (:mod:`diffbir.ui.app` shows it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from diffbir.errors import DiffBIRError, printable

#: The longest clip the page restores (5 s at 24 fps); ``diffbir restore`` has no limit.
DEFAULT_MAX_VIDEO_FRAMES = 120


@dataclass
class RestoredVideo:
    """One finished clip: the MP4 written for display and download."""

    name: str  # the uploaded file's name
    result: Path
    frames: int
    scenes: int
    seconds: float
    size: tuple[int, int]  # (height, width) of the restored frames
    caption: str = ""

    def summary(self) -> str:
        """A one-line account for the page."""
        per = self.seconds / max(self.frames, 1)
        return (
            f"{self.name}: {self.frames} frames restored in {self.seconds:.1f} s "
            f"({per:.1f} s a frame), {self.scenes} scene(s)"
        )


def is_video_upload(path: str | Path) -> bool:
    """Whether an upload is taken as a clip (by its suffix, as ``diffbir restore`` does)."""
    from diffbir.video.io import VIDEO_EXTENSIONS

    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def video_upload(paths: Sequence[str | Path]) -> Path | None:
    """The one clip among ``paths``, or None when they are all images; a
    :class:`DiffBIRError` for several clips, or a clip with images."""
    paths = [Path(p) for p in paths if p]
    clips = [p for p in paths if is_video_upload(p)]
    if not clips:
        return None
    if len(paths) > 1:
        raise DiffBIRError("upload one video on its own (or images only): one clip per run")
    return clips[0]


def clip_frames(info) -> int | None:
    """About how many frames a clip has, from its header (None when it does not say)."""
    if info.frames:
        return int(info.frames)
    if info.duration and info.rate:
        return round(info.duration * float(info.rate))
    return None


def check_clip(path: Path, *, max_frames: int, max_pixels: int):
    """The clip's header when the page can restore it, else one line saying why (too
    long, too large, not a video) and what to run instead."""
    from diffbir.video import io as vio

    info = vio.probe(path)  # VideoError (a DiffBIRError) for what is not a video
    name = printable(path.name)
    frames = clip_frames(info)
    if frames is not None and frames > max_frames:
        length = f" ({info.duration:.1f} s)" if info.duration else ""
        raise DiffBIRError(
            f"{name}: {frames} frames{length}; the page restores clips of at most "
            f"{max_frames} frames: trim it, or run `diffbir restore {name} -o out/` "
            "(--start/--end or --max-frames for a part)"
        )
    if info.width * info.height > max_pixels:
        raise DiffBIRError(
            f"{name}: {info.width}x{info.height} frames; the page takes at most "
            f"{max_pixels / 1e6:.1f} megapixels a frame"
        )
    return info


def restore_video_upload(
    path: str | Path,
    form,
    cache,
    out_root: str | Path,
    *,
    max_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    max_pixels: int,
    report: Callable[[float, str], None] | None = None,
) -> RestoredVideo:
    """Restore the uploaded clip ``path`` with the page's ``form``
    (:class:`~diffbir.ui.core.FormValues`) into a new run folder under ``out_root``.
    One result per frame (the uncertainty map is for photos: it is not made). Raises a
    :class:`DiffBIRError` (the page's message) for a clip it cannot restore."""
    from diffbir.config.settings import VideoOptions
    from diffbir.ui.core import edited_prompt, new_run_folder, safe_stem
    from diffbir.video import io as vio
    from diffbir.video.run import ClipSource, restore_clip

    report = report or (lambda fraction, text: None)
    path = Path(path)
    started = time.perf_counter()
    info = check_clip(path, max_frames=max_frames, max_pixels=max_pixels)
    total = clip_frames(info) or max_frames
    options = replace(form.to_options(), n_samples=1, uncertainty=False)
    report(0.0, "loading models")
    restorer = cache.get(form.version, form.task, on_load=lambda text: report(0.0, text))
    config = restorer.resolve(options)
    output = new_run_folder(out_root) / f"{safe_stem(path.name)}_diffbir.mp4"
    video = VideoOptions(codec="h264", max_frames=max_frames)

    def on_frame(n: int) -> None:
        report(min(n / total, 1.0), f"restoring {path.name}: frame {n}/{total}")

    result = restore_clip(
        restorer,
        config,
        video,
        ClipSource(path),
        output,
        given_prompt=edited_prompt(form, config),
        progress=False,
        on_frame=on_frame,
    )
    report(1.0, "done")
    written = vio.probe(result.output)
    return RestoredVideo(
        name=path.name,
        result=result.output,
        frames=result.frames,
        scenes=len(result.cuts),
        seconds=time.perf_counter() - started,
        size=(written.height, written.width),
        caption=result.prompts[0].caption if result.prompts else "",
    )
