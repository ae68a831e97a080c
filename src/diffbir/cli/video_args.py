"""``diffbir restore``'s video flags (clips and ``--frames`` folders) and the
:class:`~diffbir.config.settings.VideoOptions` they give."""

from __future__ import annotations

import argparse

__all__ = ["add_video_arguments", "video_options_from_args"]


def _seconds(text: str) -> float:
    """'90', '1:30', '0:01:30.5' -> seconds."""
    try:
        value = 0.0
        for part in text.strip().split(":"):
            value = value * 60 + float(part)
        return value
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (try 12.5 or 1:30)") from None


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """Video inputs (mp4, mov, mkv, avi, webm; or --frames folders): kept consistent over
    time, written with the source's timestamps and audio."""
    from diffbir.config.settings import VIDEO_CAPTIONS, VIDEO_CODECS, VideoOptions

    d = VideoOptions()
    g = p.add_argument_group("video (needs the video extra: pip install 'diffbir[video]')")
    g.add_argument(
        "--frames", action="store_true", help="each input folder is one clip of numbered frames"
    )
    g.add_argument("--frames-rate", type=float, default=d.frames_rate, help="--frames' rate")
    g.add_argument(
        "--temporal",
        choices=("on", "off"),
        default="on",
        help="off: frame by frame; on: the previous frame's latents follow the optical flow",
    )
    g.add_argument(
        "--temporal-strength",
        type=float,
        default=d.temporal_strength,
        help="share of the warped previous frame where the flow is reliable (0..1)",
    )
    g.add_argument(
        "--temporal-start",
        type=int,
        default=d.temporal_start,
        help="fuse the estimates of timesteps t < start...",
    )
    g.add_argument("--temporal-stop", type=int, default=d.temporal_stop, help="... and t > stop")
    g.add_argument(
        "--temporal-output",
        type=float,
        default=d.temporal_output,
        help="share of the previous output frame, warped, kept in each frame where the flow "
        "is reliable (0..1; 0: the latents only)",
    )
    g.add_argument(
        "--scene-threshold",
        type=float,
        default=d.scene_threshold,
        help="a scene cut (propagation reset): fewer matched pixels than this after the warp",
    )
    g.add_argument(
        "--video-codec",
        choices=VIDEO_CODECS,
        default=d.codec,
        help="h264/h265 (CRF --video-quality), ffv1 (lossless, .mkv), png (a folder of frames)",
    )
    g.add_argument(
        "--video-quality", type=int, default=None, help="CRF of h264 (18) and h265 (20), 0..51"
    )
    g.add_argument(
        "--video-captions",
        choices=VIDEO_CAPTIONS,
        default=d.captions,
        help="with a captioner: one caption per clip, or per scene",
    )
    g.add_argument("--max-frames", type=int, default=None, help="restore at most N frames")
    g.add_argument("--start", type=_seconds, default=None, help="from this time (s or m:s)")
    g.add_argument("--end", type=_seconds, default=None, help="up to this time")
    g.add_argument("--fps", type=float, default=None, help="at most N frames a second (previews)")
    g.add_argument(
        "--chunk-frames",
        type=int,
        default=d.chunk_frames,
        help="frames per finished chunk (what --skip-existing resumes from)",
    )


def video_options_from_args(args: argparse.Namespace):
    """The run's :class:`~diffbir.config.settings.VideoOptions`, checked."""
    from diffbir.config.settings import VideoOptions

    video = VideoOptions(
        temporal=args.temporal == "on",
        temporal_strength=args.temporal_strength,
        temporal_start=args.temporal_start,
        temporal_stop=args.temporal_stop,
        temporal_output=args.temporal_output,
        scene_threshold=args.scene_threshold,
        codec=args.video_codec,
        quality=args.video_quality,
        chunk_frames=args.chunk_frames,
        max_frames=args.max_frames,
        start=args.start,
        end=args.end,
        fps=args.fps,
        captions=args.video_captions,
        frames_rate=args.frames_rate,
    )
    video.validate()
    return video
