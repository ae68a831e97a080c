"""Restoring one clip: frames streamed through any restorer in resumable chunks.

:func:`restore_clip` decodes the clip frame by frame (:mod:`diffbir.video.io`), restores
each with the run's :class:`~diffbir.config.settings.RunConfig` (so with every frame's
own seeded stream from the run's seed: the same noise for every frame) and, unless
``temporal`` is off, the previous frame's latents propagated along the input's optical
flow (:mod:`diffbir.video.temporal`, :mod:`diffbir.video.flow`), and each decoded frame
fused with the previous output along the same flow, both reset at scene cuts.

Memory stays bounded: one frame in, one frame out, and the last frame's latents. Every
``chunk_frames`` restored frames are written losslessly (FFV1, RGB) as one chunk
in a hidden work folder beside the output (``.NAME.parts/``), with the state the next
chunk continues from; a chunk is renamed into place only once complete. A run stopped
part-way (Ctrl+C) and started again with ``--skip-existing`` keeps the finished chunks
and goes on from the next. When every chunk is there, the final file is encoded from them
with the chosen codec and the source's audio packets (copied, not re-encoded), written
under a temporary name and renamed: a partial output is never left under the final name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffbir.config.settings import RunConfig, VideoOptions
from diffbir.errors import ConfigError, printable
from diffbir.restore.prompts import ImagePrompt
from diffbir.video import flow as vflow
from diffbir.video import io as vio
from diffbir.video.temporal import LatentPropagation, OutputFusion

#: Bumped when the chunks' format changes (older work folders are then started over).
PARTS_FORMAT = 2


@dataclass
class ClipSource:
    """Where a clip's frames come from: a video file, or a folder of numbered frames."""

    path: Path
    frames_folder: bool = False


@dataclass
class ClipResult:
    """What :func:`restore_clip` did."""

    output: Path
    frames: int  # frames in the output
    restored: int  # restored by this call (the others came from finished chunks)
    cuts: list[int]  # output frame numbers where a scene began (0 included)
    prompts: list[ImagePrompt]
    seconds: float


def output_for(source: ClipSource, folder_out: Path, video: VideoOptions) -> Path:
    """The restored clip's path in ``folder_out``: the source's name with the codec's
    suffix (``clip.mp4`` -> ``clip.mp4``; FFV1 ``clip.mkv``; PNG frames a folder
    ``clip/``)."""
    stem = source.path.name if source.frames_folder else source.path.stem
    if source.frames_folder:
        suffix = ".mp4" if video.codec in ("h264", "h265") else ""
        suffix = ".mkv" if video.codec == "ffv1" else suffix
    else:
        suffix = vio.output_suffix(video.codec, source.path)
    if video.codec == "png":
        suffix = ""
    return folder_out / f"{stem}{suffix}"


def parts_folder(output: Path) -> Path:
    """The hidden work folder of ``output``'s chunks."""
    return output.with_name(f".{output.name}.parts")


# ------------------------------------------------------------------------ frames in
@dataclass
class _Header:
    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None
    frames: int | None
    info: vio.VideoInfo | None


def _header(source: ClipSource, video: VideoOptions) -> _Header:
    if source.frames_folder:
        files = _frame_files(source.path)
        from PIL import Image

        with Image.open(files[0]) as first:
            width, height = first.size
        rate = Fraction(video.frames_rate).limit_denominator(1001)
        return _Header(width, height, 1 / rate, rate, len(files), None)
    info = vio.probe(source.path)
    return _Header(info.width, info.height, info.time_base, info.rate, info.frames, info)


def _frame_files(folder: Path) -> list[Path]:
    from diffbir.imaging.paths import IMAGE_EXTENSIONS, collect_inputs

    if not folder.is_dir():
        raise vio.VideoError(f"{printable(folder)}: --frames takes folders of numbered frames")
    items = collect_inputs([folder], extensions=IMAGE_EXTENSIONS)
    if not items:
        raise vio.VideoError(f"{printable(folder)}: no frames in it")
    return [Path(item.path) for item in items]  # natural order: frame2 before frame10


def _frames(source: ClipSource, video: VideoOptions, header: _Header) -> Iterator[vio.Frame]:
    if not source.frames_folder:
        yield from vio.read_frames(
            source.path,
            start=video.start,
            end=video.end,
            max_rate=video.fps,
            max_frames=video.max_frames,
        )
        return
    from PIL import Image

    step = 1 if video.fps is None else max(1, round(video.frames_rate / video.fps))
    kept = 0
    for index, path in enumerate(_frame_files(source.path)):
        time_s = index / video.frames_rate
        if video.start is not None and time_s < video.start - 1e-6:
            continue
        if video.end is not None and time_s >= video.end - 1e-6:
            break
        if index % step:
            continue
        try:
            with Image.open(path) as image:
                rgb = np.array(image.convert("RGB"))
        except OSError as exc:
            raise vio.VideoError(f"{printable(path)}: cannot read the frame ({exc})") from None
        if rgb.shape[:2] != (header.height, header.width):
            raise vio.VideoError(
                f"{printable(path)}: {rgb.shape[1]}x{rgb.shape[0]}, the clip's frames are "
                f"{header.width}x{header.height}"
            )
        yield vio.Frame(index, index, time_s, rgb)
        kept += 1
        if video.max_frames is not None and kept >= video.max_frames:
            break


def _expected_frames(header: _Header, video: VideoOptions) -> int | None:
    """About how many frames the run will restore (for the progress bar), or None."""
    total = header.frames
    seconds = None
    if header.info is not None and header.info.duration:
        seconds = header.info.duration
    elif total and header.rate:
        seconds = total / float(header.rate)
    if seconds is not None and (video.start or video.end or video.fps):
        span = min(video.end or seconds, seconds) - (video.start or 0.0)
        rate = float(header.rate) if header.rate else (total or 0) / max(seconds, 1e-6)
        if video.fps:
            rate = min(rate, video.fps)
        total = max(0, round(span * rate))
    if video.max_frames is not None:
        total = video.max_frames if total is None else min(total, video.max_frames)
    return total or None


# ------------------------------------------------------------------------ the work folder
def _fingerprint(source: ClipSource, config: RunConfig, video: VideoOptions) -> str:
    """What the chunks depend on: the source file, the run's settings, the video options
    that change frames (not the codec: chunks are lossless)."""
    stat = source.path.stat()
    frame_options = {k: v for k, v in asdict(video).items() if k not in ("codec", "quality")}
    text = json.dumps(
        {
            "format": PARTS_FORMAT,
            "source": str(source.path.resolve()),
            "size": stat.st_size,
            "mtime": stat.st_mtime_ns,
            "config": repr(config),
            "video": frame_options,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _chunk_path(parts: Path, number: int) -> Path:
    return parts / f"chunk_{number:06d}.mkv"


def _state_path(parts: Path, number: int) -> Path:
    return parts / f"chunk_{number:06d}.state.pt"


def _open_parts(parts: Path, fingerprint: str, resume: bool) -> int:
    """Prepare the work folder; return how many chunks are finished (kept when resuming
    the same clip with the same settings, else started over)."""
    meta = parts / "run.json"
    if parts.exists():
        same = False
        try:
            same = json.loads(meta.read_text())["fingerprint"] == fingerprint
        except (OSError, ValueError, KeyError):
            pass
        if resume and same:
            done = 0
            while _chunk_path(parts, done).exists() and _state_path(parts, done).exists():
                done += 1
            for stray in parts.glob(".*"):  # a chunk that was being written
                stray.unlink(missing_ok=True)
            return done
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    meta.write_text(json.dumps({"fingerprint": fingerprint}))
    return 0


# ------------------------------------------------------------------------ the clip
def restore_clip(
    restorer,
    config: RunConfig,
    video: VideoOptions,
    source: ClipSource,
    output: Path,
    *,
    given_prompt: ImagePrompt | None = None,
    resume: bool = False,
    progress: bool = True,
    on_frame: Callable[[int], None] | None = None,
) -> ClipResult:
    """Restore the clip ``source`` into ``output`` (see the module's description).

    ``given_prompt``: the clip's prompt from a sidecar or a prompts table (else the
    run's prompt, with a caption of the clip's first frame, or of each scene's, when the
    run has a captioner). ``resume``: keep the finished chunks of an earlier run of the
    same clip with the same settings. ``on_frame(n)`` follows each restored frame.
    Raises :class:`~diffbir.video.io.VideoError` (one line) for a clip that cannot be
    read or written."""
    if config.n_samples != 1:
        raise ConfigError("video: one result per frame; drop --n-samples")
    started = time.perf_counter()
    header = _header(source, video)
    parts = parts_folder(output)
    done_chunks = _open_parts(parts, _fingerprint(source, config, video), resume)
    device = getattr(restorer, "device", torch.device("cpu"))
    propagation = (
        LatentPropagation(video.temporal_strength, video.temporal_start, video.temporal_stop)
        if video.temporal
        else None
    )
    fusion = OutputFusion(video.temporal_output) if video.temporal else None
    state = _load_state(parts, done_chunks - 1) if done_chunks else None
    if state is not None and propagation is not None and state["latents"]:
        propagation.load_state(state["latents"], device)
    if state is not None and fusion is not None:
        fusion.load_state(state.get("frame"))
    prompts: list[ImagePrompt] = []
    scene_prompt = None
    if state is not None and state.get("prompt"):
        scene_prompt = ImagePrompt(**state["prompt"])
    cuts: list[int] = list(state["cuts"]) if state else []
    bar = tqdm(
        total=_expected_frames(header, video),
        desc=f"restoring {source.path.name}",
        unit="frame",
        disable=not progress,
        leave=False,
    )
    # Cuts are found where the flow is followed, and for captions per scene.
    scenes = video.temporal or video.captions == "scene"
    previous_gray = None
    count, restored, number = 0, 0, 0
    chunk: list[tuple[int, np.ndarray]] = []
    with bar:
        frames = _frames(source, video, header)
        for frame in frames:
            gray = vflow.flow_gray(frame.rgb) if scenes else None
            if number < done_chunks:  # a finished chunk: its frames are only decoded
                count += 1
                if count % video.chunk_frames == 0:
                    number += 1
                previous_gray = gray
                bar.update(1)
                continue
            motion = None
            if previous_gray is not None and gray is not None:
                motion = vflow.motion(previous_gray, gray)
                if vflow.is_cut(motion, video.scene_threshold):
                    motion = None
            if count == 0 or (scenes and motion is None):
                cuts.append(count)
                if video.captions == "scene" or scene_prompt is None:
                    scene_prompt = None
            previous_gray = gray
            lq = torch.from_numpy(frame.rgb).permute(2, 0, 1)[None].float().div_(255.0)
            if scene_prompt is None:
                scene_prompt = _frame_prompt(restorer, lq, config, given_prompt)
                prompts.append(scene_prompt)
            if propagation is not None:
                propagation.next_frame(motion)
            result = restorer.restore(lq, config, [scene_prompt], latent_hook=propagation)
            image = result.image[0].clamp(0, 1).mul(255).round().byte()
            image = image.permute(1, 2, 0).cpu().numpy()
            if fusion is not None:
                image = fusion(image, motion)
            chunk.append((frame.pts, image))
            count += 1
            restored += 1
            bar.update(1)
            if on_frame is not None:
                on_frame(count)
            if len(chunk) == video.chunk_frames:
                _write_chunk(
                    parts, number, chunk, header, (propagation, fusion), scene_prompt, cuts
                )
                chunk, number = [], number + 1
        if chunk:
            _write_chunk(parts, number, chunk, header, (propagation, fusion), scene_prompt, cuts)
            number += 1
    if count == 0:
        raise vio.VideoError(f"{printable(source.path)}: no frames in the chosen range")
    _assemble(parts, number, output, header, video, source)
    shutil.rmtree(parts, ignore_errors=True)
    return ClipResult(output, count, restored, cuts, prompts, time.perf_counter() - started)


def _frame_prompt(restorer, lq, config: RunConfig, given: ImagePrompt | None) -> ImagePrompt:
    """The prompt of a clip or scene: the given one, else the run's (captioned)."""
    prompt = restorer.image_prompts(lq, config, given=[given])[0]
    restorer.prepare_image_prompts([prompt])
    return prompt


def _write_chunk(parts, number, frames, header, temporal, prompt, cuts) -> None:
    """One finished chunk: FFV1 (RGB, lossless) and the state after its last frame
    (``temporal``: the clip's latent propagation and output fusion, or Nones), each
    written under a hidden name and renamed (the chunk last: its name marks it done)."""
    propagation, fusion = temporal
    h, w = frames[0][1].shape[:2]
    target = _chunk_path(parts, number)
    temp = parts / f".{target.name}"
    with vio.FrameWriter(
        temp,
        codec="ffv1",
        quality=None,
        width=w,
        height=h,
        time_base=header.time_base,
        rate=header.rate,
        container_format="matroska",
        lossless_rgb=True,
    ) as writer:
        for pts, rgb in frames:
            writer.write(rgb, pts)
    state = {
        "latents": propagation.state() if propagation is not None else {},
        "frame": fusion.state() if fusion is not None else None,
        "prompt": None if prompt is None else asdict(prompt),
        "cuts": list(cuts),
        # the source's timestamps (Matroska would round them to milliseconds)
        "pts": torch.tensor([pts for pts, _ in frames], dtype=torch.int64),
    }
    state_temp = parts / f".{_state_path(parts, number).name}"
    torch.save(state, state_temp)
    state_temp.replace(_state_path(parts, number))
    temp.replace(target)


def _load_state(parts: Path, number: int) -> dict:
    state = torch.load(_state_path(parts, number), weights_only=True)
    prompt = state.get("prompt")
    if prompt is not None:
        prompt["tiles"] = tuple(tuple(t) for t in prompt.get("tiles", ()))
    return state


def _assemble(parts, chunks: int, output: Path, header: _Header, video, source) -> None:
    """The final file from the chunks: encoded with the chosen codec, the source's audio
    copied, written under a temporary name and renamed over ``output``."""
    first_time = None
    temp = vio.temp_path(output)
    audio_from = None if source.frames_folder or not header.info.audio else source.path
    writer = None
    try:
        for number in range(chunks):
            stamps = _load_state(parts, number)["pts"].tolist()
            for pts, rgb in zip(stamps, vio.read_chunk(_chunk_path(parts, number))):
                if writer is None:
                    first_time = float(pts * header.time_base) if video.start else 0.0
                    shift = round(first_time / header.time_base)
                    writer = vio.FrameWriter(
                        temp,
                        codec=video.codec,
                        quality=video.quality,
                        width=rgb.shape[1],
                        height=rgb.shape[0],
                        time_base=header.time_base,
                        rate=header.rate,
                        info=header.info,
                        audio_from=audio_from,
                        container_format=_container_of(output),
                    )
                    audio = writer.audio_packets(video.start, video.end)
                    pending = next(audio, None)
                t = float(pts * header.time_base)
                while pending is not None and float(pending.pts * pending.time_base) <= t:
                    writer.mux_audio(pending, first_time)
                    pending = next(audio, None)
                writer.write(rgb, pts - shift)
        if writer is None:
            raise vio.VideoError(f"{printable(source.path)}: nothing was restored")
        while pending is not None:
            writer.mux_audio(pending, first_time)
            pending = next(audio, None)
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        _remove(temp)
        raise
    if output.is_dir():
        shutil.rmtree(output)
    elif output.exists():
        output.unlink()
    temp.replace(output)


def _container_of(output: Path) -> str | None:
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(
        output.suffix.lower()
    )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def describe(result: ClipResult) -> str:
    """One line on a restored clip."""
    per = result.seconds / max(result.restored, 1)
    scenes = len(result.cuts)
    return (
        f"{printable(result.output.name)}: {result.frames} frames "
        f"({result.restored} restored now, {per:.2f} s each), {scenes} scene(s)"
    )


def note(text: str) -> None:
    print(f"diffbir: {text}", file=sys.stderr)


def restore_clips(
    restorer,
    config: RunConfig,
    video: VideoOptions,
    clips: list[tuple[ClipSource, Path]],
    *,
    resume: bool,
    progress: bool,
    report: Callable[[Path, str], None],
    prompt_of: Callable[[Path], ImagePrompt | None] = lambda path: None,
    verbose: bool = False,
) -> int:
    """Restore every clip of a batch, one after the other; a clip that cannot be read or
    written is reported in one line (``report(path, reason)``) and the batch goes on.
    Returns how many were restored. Ctrl+C propagates (finished chunks stay)."""
    from diffbir.errors import DiffBIRError

    restored = 0
    for source, output in clips:
        try:
            result = restore_clip(
                restorer,
                config,
                video,
                source,
                output,
                given_prompt=prompt_of(source.path),
                resume=resume,
                progress=progress,
            )
        except DiffBIRError as exc:
            report(source.path, str(exc))
            continue
        restored += 1
        if verbose:
            note(describe(result))
    return restored


def is_video(path: Path) -> bool:
    """Whether a batch input is taken as a clip (by its suffix)."""
    return Path(path).suffix.lower() in vio.VIDEO_EXTENSIONS
