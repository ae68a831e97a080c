"""Video files through PyAV (its wheels carry FFmpeg): frames in, frames out, audio kept.

* :func:`probe` reads a clip's header: size, rate, duration, rotation, colour tags,
  audio streams; a file FFmpeg cannot open is a :class:`VideoError` in one line.
* :func:`read_frames` decodes the video stream into :class:`Frame` objects (RGB uint8,
  upright: the display rotation applied, the colour matrix and range of the stream's
  tags used), with their source timestamps, optionally within a time range and at
  most a rate (``--fps``: frames dropped, the kept ones keep their timestamps).
* :class:`FrameWriter` encodes frames with the source's timestamps (variable frame rate
  kept) into H.264/H.265 at a stated quality, FFV1 (lossless, in Matroska) or PNG
  frames, tagged with the source's colour matrix and range, and copies the source's
  audio packets unchanged (:func:`copy_audio`).

A truncated or damaged file decodes up to the damage and then raises a
:class:`VideoError`; nothing here writes a final file: callers write to a temporary
name and rename (:mod:`diffbir.video.run`).
"""

from __future__ import annotations

import fractions
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffbir.errors import DiffBIRError, printable

#: Suffixes taken as videos when a folder or glob is expanded.
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg"})

#: ``--video-codec`` -> (FFmpeg encoder, pixel format, output suffix, default quality).
#: The quality of H.264/H.265 is x264/x265's CRF (lower is better; 18 is visually
#: lossless for most footage); FFV1 and PNG are lossless.
CODECS: dict[str, tuple[str, str, str, int | None]] = {
    "h264": ("libx264", "yuv420p", ".mp4", 18),
    "h265": ("libx265", "yuv420p", ".mp4", 20),
    "ffv1": ("ffv1", "yuv444p", ".mkv", None),
    "png": ("png", "rgb24", "", None),
}

#: Containers the H.264/H.265 outputs keep from the input (others become .mkv).
_KEEP_CONTAINER = {".mp4": "mp4", ".mov": "mov", ".m4v": "mp4", ".mkv": "matroska"}


class VideoError(DiffBIRError):
    """A video that cannot be read or written (one line naming it)."""


def _av():
    # PyAV is the optional extra diffbir[video]; imported on use so that `import diffbir`
    # and `--help` never load it.
    try:
        import av
    except ImportError:
        raise VideoError(
            "video needs PyAV: pip install 'diffbir[video]' (or pip install av)"
        ) from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What a clip's header says."""

    path: Path
    width: int  # as displayed (rotation applied)
    height: int
    rate: fractions.Fraction | None  # the stream's average frame rate
    time_base: fractions.Fraction
    duration: float | None  # seconds
    frames: int | None  # the header's count (0/None when unknown)
    rotation: int  # degrees counter-clockwise the frames are shown turned by
    colorspace: int  # AVColorSpace of the stream (2: unspecified)
    color_range: int  # AVColorRange (0 unspecified, 1 limited, 2 full)
    color_primaries: int
    color_trc: int
    codec: str
    audio: tuple[str, ...] = field(default=())  # the audio streams' codecs


@dataclass
class Frame:
    """One decoded frame: RGB uint8 ``[H, W, 3]``, its index in the source, its
    timestamp (stream ``time_base`` units) and time in seconds."""

    index: int
    pts: int
    time: float
    rgb: np.ndarray


def _open(path: Path):
    av = _av()
    try:
        return av.open(str(path), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{printable(path)}: not a video FFmpeg can read ({_why(exc)})") from None


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _video_stream(container, path: Path):
    streams = container.streams.video
    if not streams:
        raise VideoError(f"{printable(path)}: has no video stream")
    return streams[0]


def _rotation_of(stream) -> int:
    """The display rotation of ``stream`` in degrees (counter-clockwise, a multiple of 90)."""
    degrees = 0
    for data in getattr(stream, "side_data", None) or ():  # older PyAV: none
        degrees = getattr(data, "rotation", degrees)
    return int(round(degrees / 90.0)) * 90 % 360


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """The header of the clip at ``path`` (one line naming it if it is not a video)."""
    path = Path(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        ctx = stream.codec_context
        rotation = _rotation_of(stream)
        first = None
        if rotation == 0 or ctx.width == 0:
            # Frames carry the display matrix on recent FFmpeg; read one to be sure.
            try:
                first = next(container.decode(stream), None)
            except _av().FFmpegError as exc:
                raise VideoError(f"{printable(path)}: cannot decode ({_why(exc)})") from None
            if first is not None:
                rotation = int(round((first.rotation or 0) / 90.0)) * 90 % 360
        width, height = ctx.width, ctx.height
        if first is not None:
            width, height = first.width, first.height
        if width <= 0 or height <= 0:
            raise VideoError(f"{printable(path)}: has no frames")
        if rotation in (90, 270):
            width, height = height, width
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            rate=stream.average_rate or stream.guessed_rate,
            time_base=stream.time_base or fractions.Fraction(1, 90000),
            duration=duration,
            frames=stream.frames or None,
            rotation=rotation,
            colorspace=int(_tag(first, ctx, "colorspace")),
            color_range=int(_tag(first, ctx, "color_range")),
            color_primaries=int(_tag(first, ctx, "color_primaries")),
            color_trc=int(_tag(first, ctx, "color_trc")),
            codec=ctx.name,
            audio=tuple(a.codec_context.name for a in container.streams.audio),
        )
    finally:
        container.close()


def _tag(frame, ctx, name: str) -> int:
    """A colour tag of the first frame, else of the stream (0/2: unspecified)."""
    value = getattr(frame, name, None) if frame is not None else None
    if value is None:
        value = getattr(ctx, name, 0)
    return int(value or 0)


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """The frame as shown: ``rotation`` degrees counter-clockwise (np.rot90's sense)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def to_rgb(frame) -> np.ndarray:
    """RGB uint8 of a decoded frame, through its own colour matrix and range."""
    kwargs = {}
    if frame.format.name != "rgb24":
        if frame.colorspace not in (None, 2):  # 2: unspecified, swscale's default (BT.601)
            kwargs["src_colorspace"] = int(frame.colorspace)
        if frame.color_range:
            kwargs["src_color_range"] = int(frame.color_range)
    return frame.reformat(format="rgb24", **kwargs).to_ndarray()


def read_frames(
    path: str | os.PathLike[str],
    *,
    start: float | None = None,
    end: float | None = None,
    max_rate: float | None = None,
    max_frames: int | None = None,
    rotation: int | None = None,
) -> Iterator[Frame]:
    """The clip's frames in display order, upright, RGB uint8, each with its source
    index and timestamp. ``start``/``end`` (seconds) keep frames whose time is in
    ``[start, end)``; ``max_rate`` drops frames so that at most that many per second
    remain (the kept ones keep their timestamps); ``max_frames`` stops after that many.
    A decoding error part-way (a truncated file) is a :class:`VideoError` naming the
    frame it stopped at."""
    path = Path(path)
    av = _av()
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        time_base = stream.time_base or fractions.Fraction(1, 90000)
        if rotation is None:
            rotation = _rotation_of(stream)
            rotation_known = rotation != 0
        else:
            rotation_known = True
        if start:
            # Seek to the keyframe before start; frames before it are skipped below.
            container.seek(int(start / time_base), stream=stream, backward=True)
        index, kept, next_time = -1, 0, None
        last_pts = None
        try:
            for frame in container.decode(stream):
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None:
                    pts = 0 if last_pts is None else last_pts + 1
                last_pts = pts
                index += 1
                time = float(pts * time_base)
                if start is not None and time < start - 1e-6:
                    continue
                if end is not None and time >= end - 1e-6:
                    break
                if max_rate is not None:
                    if next_time is not None and time < next_time - 1e-6:
                        continue
                    next_time = (next_time or time) + 1.0 / max_rate
                    next_time = max(next_time, time)  # a long gap does not bunch the next
                if not rotation_known:
                    rotation = int(round((frame.rotation or 0) / 90.0)) * 90 % 360
                    rotation_known = True
                yield Frame(index, int(pts), time, _upright(to_rgb(frame), rotation))
                kept += 1
                if max_frames is not None and kept >= max_frames:
                    break
        except av.FFmpegError as exc:
            raise VideoError(
                f"{printable(path)}: damaged or truncated after {kept} frame(s) ({_why(exc)})"
            ) from None
        if kept == 0 and not start and not end:
            raise VideoError(f"{printable(path)}: has no frames")
    finally:
        container.close()


def output_suffix(codec: str, source: Path) -> str:
    """The restored clip's suffix: ``.mkv`` for FFV1, none for PNG frames (a folder),
    else the source's container when it holds H.264/H.265 (mp4, mov, mkv), ``.mp4`` for
    the rest."""
    if codec == "png":
        return ""
    if codec == "ffv1":
        return ".mkv"
    suffix = source.suffix.lower()
    return suffix if suffix in _KEEP_CONTAINER else ".mp4"


def temp_path(path: Path) -> Path:
    """A hidden temporary name beside ``path`` in the pattern the batch cleans up after a
    killed run (``.NAME.<pid>-<hex>.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


_FORMAT_OF = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


class FrameWriter:
    """Encodes RGB uint8 frames at given timestamps into ``path`` (a video file; or,
    for ``png``, a folder of ``frame_NNNNNN.png`` with ``timestamps.txt``), the source's
    audio streams copied unchanged. Use as a context manager; call :meth:`close`."""

    def __init__(
        self,
        path: Path,
        *,
        codec: str,
        quality: int | None,
        width: int,
        height: int,
        time_base: fractions.Fraction,
        rate: fractions.Fraction | None,
        info: VideoInfo | None = None,
        audio_from: Path | None = None,
        container_format: str | None = None,
        lossless_rgb: bool = False,
    ) -> None:
        av = _av()
        self.path = Path(path)
        self.codec = codec
        self.time_base = time_base
        self.frames = 0
        self.png = codec == "png"
        self._times: list[float] = []
        self._audio_in = None
        self._audio_map: dict[int, object] = {}
        if self.png:
            self.path.mkdir(parents=True, exist_ok=True)
            self.container = None
            return
        encoder, pix_fmt, _, default_quality = CODECS[codec]
        if lossless_rgb:  # intermediate chunks: FFV1 in RGB (bgr0), bit-exact
            pix_fmt = "bgr0"
        fmt = container_format or _FORMAT_OF.get(self.path.suffix.lower(), "matroska")
        try:
            # Matroska would shift every stream to make the audio's priming (negative
            # timestamps) non-negative, moving the video's timestamps; mp4 uses edit lists.
            options = {"avoid_negative_ts": "disabled"} if fmt == "matroska" else {}
            self.container = av.open(str(self.path), "w", format=fmt, options=options)
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"{printable(self.path)}: cannot write ({_why(exc)})") from None
        stream = self.container.add_stream(encoder, rate=rate or fractions.Fraction(24))
        if pix_fmt == "yuv420p":
            stream.width, stream.height = width + width % 2, height + height % 2
        else:
            stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        options = {}
        if codec in ("h264", "h265"):
            options["crf"] = str(default_quality if quality is None else quality)
            options["preset"] = "medium"
            if codec == "h265":
                options["x265-params"] = "log-level=error"
        stream.options = options
        self._colour = {}
        if info is not None and pix_fmt.startswith("yuv"):
            ctx = stream.codec_context
            for name in ("colorspace", "color_range", "color_primaries", "color_trc"):
                value = getattr(info, name)
                if value:
                    try:
                        setattr(ctx, name, value)
                    except (AttributeError, TypeError, ValueError):
                        pass
            if info.colorspace not in (0, 2):
                self._colour["dst_colorspace"] = info.colorspace
            self._colour["dst_color_range"] = info.color_range or 1  # limited: the default
        self.stream = stream
        self._pix_fmt = pix_fmt
        if audio_from is not None:
            self._add_audio(audio_from)

    # ---------------------------------------------------------------- audio
    def _add_audio(self, source: Path) -> None:
        container = _open(source)
        audio = list(container.streams.audio)
        if not audio:
            container.close()
            return
        supported = getattr(self.container, "supported_codecs", None)
        for stream in audio:
            name = stream.codec_context.name
            if supported is not None and name not in supported:
                container.close()
                raise VideoError(
                    f"{printable(source)}: its {name} audio cannot go into "
                    f"{self.path.suffix or 'this container'} unchanged; "
                    "use --video-codec ffv1 (mkv)"
                )
            try:
                self._audio_map[stream.index] = self.container.add_stream_from_template(stream)
            except (_av().FFmpegError, ValueError) as exc:
                container.close()
                raise VideoError(
                    f"{printable(source)}: cannot copy its {name} audio ({_why(exc)})"
                ) from None
        self._audio_in = container

    def audio_packets(self, start: float | None = None, end: float | None = None) -> Iterator:
        """The source's audio packets that overlap ``[start, end)`` seconds (all of them,
        the encoder's priming included, without a range), in file order."""
        if self._audio_in is None:
            return iter(())
        streams = [s for s in self._audio_in.streams.audio if s.index in self._audio_map]

        def packets():
            for packet in self._audio_in.demux(*streams):
                if packet.pts is None or packet.size == 0:
                    continue
                t = float(packet.pts * packet.time_base)
                length = float((packet.duration or 0) * packet.time_base)
                if start is not None and t + length <= start + 1e-6:
                    continue
                if end is not None and t >= end - 1e-6:
                    continue
                yield packet

        return packets()

    def mux_audio(self, packet, shift: float) -> None:
        """Write an audio packet, its time moved back by ``shift`` seconds."""
        out = self._audio_map[packet.stream.index]
        delta = int(round(shift / packet.time_base))
        packet.pts -= delta
        if packet.dts is not None:
            packet.dts -= delta
        packet.stream = out
        self.container.mux(packet)

    # ---------------------------------------------------------------- video
    def write(self, rgb: np.ndarray, pts: int) -> None:
        """Encode one RGB uint8 ``[H, W, 3]`` frame at ``pts`` (``time_base`` units)."""
        av = _av()
        self.frames += 1
        if self.png:
            from PIL import Image

            name = self.path / f"frame_{self.frames:06d}.png"
            Image.fromarray(rgb).save(name)
            self._times.append(float(pts * self.time_base))
            return
        if rgb.shape[1] != self.stream.width or rgb.shape[0] != self.stream.height:
            # 4:2:0 needs even sizes: repeat the last row/column.
            pad_h, pad_w = self.stream.height - rgb.shape[0], self.stream.width - rgb.shape[1]
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format=self._pix_fmt, **self._colour)
        frame.pts = int(pts)
        frame.time_base = self.time_base
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except av.FFmpegError as exc:
            raise VideoError(f"{printable(self.path)}: cannot encode ({_why(exc)})") from None

    def close(self) -> None:
        """Flush the encoder and finish the file (or the PNG folder's timestamps)."""
        if self.png:
            if self._times:
                start = self._times[0]
                lines = ["# timestamp format v2"]
                lines += [f"{(t - start) * 1000:.3f}" for t in self._times]
                (self.path / "timestamps.txt").write_text("\n".join(lines) + "\n")
            return
        if self.container is None:
            return
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None
            if self._audio_in is not None:
                self._audio_in.close()
                self._audio_in = None

    def abort(self) -> None:
        """Close without flushing (the caller removes the partial file)."""
        for container in (self.container, self._audio_in):
            if container is not None:
                try:
                    container.close()
                except Exception:  # noqa: BLE001 - closing a broken file, nothing to keep
                    pass
        self.container = self._audio_in = None

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def read_chunk(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 of every frame of one of our FFV1 chunks, in order."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")
    finally:
        container.close()
