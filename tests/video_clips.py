"""Tiny clips for the video tests, written with PyAV: known frames, variable frame rate,
an audio stream, optional rotation and colour tags."""

from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np


def moving_frames(n: int, width: int = 48, height: int = 32, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB uint8 frames of a smooth random texture moving 1 pixel right per frame."""
    import cv2

    gen = np.random.default_rng(seed)
    base = gen.random((height, width + n + 8, 3)).astype(np.float32)
    base = cv2.GaussianBlur(base, (0, 0), 2.0)
    base = (base - base.min()) / (base.max() - base.min() + 1e-8)
    frames = []
    for k in range(n):
        x0 = n - k  # content moves right
        frames.append((base[:, x0 : x0 + width] * 255).round().astype(np.uint8))
    return frames


def write_clip(
    path: Path,
    frames: list[np.ndarray],
    *,
    pts: list[int] | None = None,
    time_base: fractions.Fraction = fractions.Fraction(1, 1000),
    audio: bool = True,
    codec: str = "libx264",
    rotation: int = 0,
    colorspace: str | None = None,
) -> list[int]:
    """Write ``frames`` at timestamps ``pts`` (default: a variable rate, 40/40/80 ms...)
    with a 440 Hz AAC stream when ``audio``; returns the timestamps."""
    import av

    if pts is None:
        pts, t = [], 0
        for k in range(len(frames)):
            pts.append(t)
            t += 80 if k % 3 == 2 else 40
    h, w = frames[0].shape[:2]
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=25)
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuv420p" if codec != "ffv1" else "yuv444p"
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    if codec == "libx264":
        stream.options = {"crf": "10", "bf": "0"}
    if colorspace:
        stream.codec_context.colorspace = av.video.reformatter.Colorspace[colorspace]
        stream.codec_context.color_range = 1
    if rotation:
        stream.set_display_rotation(rotation)
    astream = None
    if audio:
        astream = container.add_stream("aac", rate=16000)
        astream.layout = "mono"
    for frame_rgb, t in zip(frames, pts):
        frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
        if colorspace:
            frame = frame.reformat(
                format="yuv420p", dst_colorspace=colorspace.lower(), dst_color_range=1
            )
        frame.pts = t
        frame.time_base = time_base
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    if astream is not None:
        seconds = (pts[-1] + 40) * float(time_base)
        samples = int(16000 * seconds)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)
        step = 1024
        for i in range(0, samples, step):
            chunk = tone[i : i + step]
            aframe = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            aframe.sample_rate = 16000
            aframe.pts = i
            for packet in astream.encode(aframe):
                container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)
    container.close()
    return pts


def audio_packets(path: Path) -> list[bytes]:
    """The bytes of every audio packet of the first audio stream."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def video_pts(path: Path) -> list[float]:
    """Every video frame's time in seconds, in display order."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(f.pts * stream.time_base) for f in container.decode(stream)]
