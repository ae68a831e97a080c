"""The output fusion's strength, measured on clips ``bench_video.py --keep`` kept (issue #29).

:class:`diffbir.video.temporal.OutputFusion` works on the decoded frames only, after the
latent propagation, so applying it to the temporal-on outputs of a run made with
``--output 0`` (latents only) gives, frame for frame, what ``restore_clip`` writes with
``--temporal-output S``: the motion is computed from the same decoded source frames
(:func:`diffbir.video.flow.motion`, cuts at the default threshold), the previous fused
frame kept as the uint8 frame written. One restoration then measures every strength::

    python benchmarks/bench_video.py --threads 2 --steps 4 --output 0 --keep kept/
    python benchmarks/video_output_fusion.py kept/ --strengths 0 0.3 0.5 0.7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fused(source_frames, restored, strength: float, threshold: float = 0.3):
    """``restored`` (temporal on, output fusion off) with the output fusion applied."""
    from diffbir.video import flow as vflow
    from diffbir.video.temporal import OutputFusion

    fusion, previous, out = OutputFusion(strength), None, []
    for rgb, frame in zip(source_frames, restored, strict=True):
        gray, motion = vflow.flow_gray(rgb), None
        if previous is not None:
            motion = vflow.motion(previous, gray)
            if vflow.is_cut(motion, threshold):
                motion = None
        previous = gray
        out.append(fusion(frame, motion))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", type=Path, help="bench_video.py's --keep folder")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0, 0.3, 0.5, 0.7])
    parser.add_argument("--restorers", default="diffbir,hypir")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_video import clean_motion, decode, measure

    clean, source = decode(args.kept / "clean.mkv"), decode(args.kept / "degraded.mkv")
    motions = clean_motion(clean, len(clean) // 2)
    print("| clip | temporal | E_warp x1e3 | flicker x1e3 | tOF px | PSNR dB | on/off |")
    print("|---|---|---|---|---|---|---|")
    for name in args.restorers.split(","):
        off = measure(decode(args.kept / f"{name}_off.mkv"), clean, motions)
        on = decode(args.kept / f"{name}_on.mkv")
        rows = [("off", off)]
        rows += [
            (f"on, output {s:g}", measure(fused(source, on, s), clean, motions))
            for s in args.strengths
        ]
        for label, m in rows:
            ratio = m["E_warp"] / off["E_warp"]
            print(
                f"| {name} | {label} | {m['E_warp']:.3f} | {m['flicker']:.2f} | {m['tOF']:.3f} "
                f"| {m['PSNR']:.2f} | x{ratio:.3f}, {m['PSNR'] - off['PSNR']:+.2f} dB |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
