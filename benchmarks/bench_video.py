"""Temporal consistency of video restoration: ``--temporal off`` against on (issue #29).

Builds the test clip of the issue from a real photo (default
``../shared/samples/bsr/14.jpg``): 2 s at 24 fps, a pan over one part of the photo for
the first second and a zoom into another part for the second (known motion, a scene cut
in the middle), each frame degraded with the project's degradation model (the
``codeformer`` preset's blur, resize and JPEG drawn once for the clip, as a film's
optics would be, and its noise drawn anew for every frame, like film grain). Restores it
with each restorer (DiffBIR v2.1 and HYPIR) frame by frame and with temporal
consistency, through :func:`diffbir.video.run.restore_clip` (lossless FFV1 outputs), and
measures, against the clean clip (:mod:`diffbir.video.consistency`):

* ``E_warp``: the warping error of the video restoration papers, the mean squared
  difference between each output frame and the previous output frame warped onto it
  with the *clean* clip's backward flow (DIS), on the pixels where the clean clip's
  forward-backward check says the flow holds (occlusions masked), x 1e3, values in
  [0, 1]; the pair across the cut is left out;
* ``flicker``: the mean absolute temporal difference of the output against the clean
  clip's, both warped the same way: ``|(out_t - W out_t-1) - (clean_t - W clean_t-1)|``
  x 1e3;
* ``tOF``: the mean end-point difference (pixels) between the output's flow and the clean
  clip's;
* ``PSNR``: the mean per-frame PSNR against the clean frames.

Without full-size weights it runs on the tests' tiny random-weight release
(``tests/tiny_release.py``), or with ``--full-size-random`` on the released
architectures with random weights (``benchmarks/bench_pipeline.py``'s v2.1 ``sr``
pipeline, ``benchmarks/bench_hypir.py``'s HYPIR; on a CPU keep the clip small:
``--size 64 --fps 12 --seconds 1 --min-side 64 --hypir-tile 64``): the figures then say how much the temporal methods remove of
what random weights make flicker, not what a trained model does. Run from the
repository root::

    python benchmarks/bench_video.py --threads 2 --steps 4
    python benchmarks/bench_video.py --threads 2 --steps 2 --full-size-random \
        --size 64 --fps 12 --seconds 1 --min-side 64 --hypir-tile 64
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "samples" / "bsr" / "14.jpg"


def build_clip(photo: Path, size: int, fps: int, seconds: float, seed: int):
    """(clean frames, degraded frames), RGB uint8 ``[size, size, 3]``; the cut at the middle."""
    from diffbir.degradation.pipelines import load_pipeline

    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    n = int(round(fps * seconds))
    half = n // 2
    clean = []
    side = min(h, w) * 0.55
    for k in range(n):
        if k < half:  # a pan left to right over the upper left part
            s = side
            x0 = (w * 0.05) + (w * 0.35) * k / max(1, half - 1)
            y0 = h * 0.1
        else:  # a zoom into the lower right part
            u = (k - half) / max(1, n - half - 1)
            s = side * (1.0 - 0.4 * u)
            cx, cy = w * 0.7, h * 0.62
            x0, y0 = cx - s / 2, cy - s / 2
        # Sub-pixel crops by an affine warp (area-like through the supersampled source).
        scale = size / s
        matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float32)
        frame = cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT
        )
        clean.append(frame)

    degrade = load_pipeline("codeformer")
    rng = np.random.default_rng(seed)
    plan = degrade.sample(rng, 1, (size, size))
    lq = []
    for k, frame in enumerate(clean):
        hq = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
        generator = torch.Generator().manual_seed(seed * 1000 + k)  # new grain every frame
        out = degrade.apply(hq, plan, generator).lq
        lq.append((out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return clean, lq, half, plan


def describe_plan(plan) -> str:
    """The plan's stages and their scalar parameters (no kernels)."""
    parts = []
    for stage in plan:
        values = []
        params = stage.get("params")
        for item in params if isinstance(params, list) else [stage]:
            for key, value in item.items():
                if key in ("stage", "kernels", "params") or value is None:
                    continue
                if isinstance(value, float):
                    value = round(value, 2)
                values.append(f"{key}={value}")
        parts.append(f"{stage['stage']}({', '.join(values)})")
    return ", ".join(parts)


def write_clip(path: Path, frames, fps: int) -> None:
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream("ffv1", rate=fps)
    stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
    stream.pix_fmt = "bgr0"
    for k, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="bgr0")
        frame.pts = k
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


def decode(path: Path):
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def clean_motion(clean, cut: int):
    """Per pair (t-1, t) but the cut: the clean clip's backward flow and occlusion mask."""
    from diffbir.video.consistency import reference_motion

    return reference_motion(clean, (cut,))


def measure(frames, clean, motions) -> dict[str, float]:
    from diffbir.video import consistency as c

    return {
        "E_warp": 1e3 * c.warping_error(frames, motions),
        "flicker": 1e3 * c.flicker(frames, clean, motions),
        "tOF": c.flow_difference(frames, motions),
        "PSNR": c.mean_psnr(frames, clean),
    }


def load(name: str, weights: Path | None, models: Path | None):
    """The restorer ``name`` (diffbir or hypir): the tiny release in ``weights``, or with
    ``weights`` None the full-size architectures with random weights."""
    if weights is None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_hypir import build_hypir
        from bench_pipeline import build_pipeline

        cpu = torch.device("cpu")
        if name == "hypir":
            return build_hypir(cpu, torch.float32)
        return build_pipeline("v2.1", "sr", cpu, torch.float32)
    from diffbir import load_restorer

    version = "hypir" if name == "hypir" else "v2.1"
    return load_restorer(
        version, "sr", weights_dir=weights, model_config=models, download=False, progress=False
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=SAMPLE)
    parser.add_argument("--size", type=int, default=128, help="frame side (pixels)")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--restorers", default="diffbir,hypir")
    parser.add_argument("--min-side", type=int, default=128, help="DiffBIR's diffusion side")
    parser.add_argument("--steps", type=int, default=None, help="DiffBIR steps (release's)")
    parser.add_argument("--strength", type=float, default=None, help="--temporal-strength")
    parser.add_argument(
        "--hypir-tile", type=int, default=256, help="HYPIR's patch (its diffusion side)"
    )
    parser.add_argument("--output", type=float, default=None, help="--temporal-output")
    parser.add_argument(
        "--full-size-random",
        action="store_true",
        help="the released architectures with random weights (not the tiny release)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the clips in this folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_release import make_tiny_release

    from diffbir.config.settings import RestoreOptions, VideoOptions
    from diffbir.video.run import ClipSource, restore_clip

    work = Path(tempfile.mkdtemp(prefix="bench_video_")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    clean, lq, cut, plan = build_clip(args.photo, args.size, args.fps, args.seconds, args.seed)
    source = work / "degraded.mkv"
    write_clip(source, lq, args.fps)
    write_clip(work / "clean.mkv", clean, args.fps)
    motions = clean_motion(clean, cut)
    weights = models = None
    if not args.full_size_random:
        weights = work / "weights"
        weights.mkdir(exist_ok=True)
        models = make_tiny_release(weights)
    kind = "full-size random weights" if args.full_size_random else "tiny release"
    print(
        f"# {len(clean)} frames {args.size}x{args.size} at {args.fps} fps, cut at frame {cut}; "
        f"{kind}; {platform.node()} ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"# degradation (one plan for the clip, new noise per frame): {describe_plan(plan)}")
    rows = [("degraded input", "-", measure(lq, clean, motions), None)]
    rows.append(("clean clip", "-", measure(clean, clean, motions), None))
    for name in args.restorers.split(","):
        restorer = load(name, weights, models)
        options = dict(captioner="none", upscale=1)
        if name != "hypir":
            options.update(min_side=args.min_side)
            if args.steps:
                options.update(steps=args.steps)
        else:
            options.update(latent_tile=args.hypir_tile)  # the clip fits one patch
        config = restorer.resolve(RestoreOptions(**options))
        for temporal in (False, True):
            knobs = {}
            if args.strength is not None:
                knobs["temporal_strength"] = args.strength
            if args.output is not None:
                knobs["temporal_output"] = args.output
            video = VideoOptions(temporal=temporal, codec="ffv1", **knobs)
            out = work / f"{name}_{'on' if temporal else 'off'}.mkv"
            start = time.perf_counter()
            result = restore_clip(restorer, config, video, ClipSource(source), out, progress=False)
            seconds = (time.perf_counter() - start) / result.frames
            label = f"{name} ({config.sampler if name != 'hypir' else 'one step'})"
            rows.append(
                (label, "on" if temporal else "off", measure(decode(out), clean, motions), seconds)
            )
            if temporal:
                print(f"# {name}: scenes start at frames {result.cuts}")
    print("| clip | temporal | E_warp x1e3 | flicker x1e3 | tOF px | PSNR dB | s/frame |")
    print("|---|---|---|---|---|---|---|")
    for label, temporal, m, seconds in rows:
        s = "-" if seconds is None else f"{seconds:.2f}"
        print(
            f"| {label} | {temporal} | {m['E_warp']:.3f} | {m['flicker']:.2f} | {m['tOF']:.3f} "
            f"| {m['PSNR']:.2f} | {s} |"
        )
    by = {(label, temporal): m for label, temporal, m, _ in rows}
    for label, temporal, m, _ in rows:
        if temporal == "on":
            off = by[(label, "off")]
            print(
                f"# {label}: E_warp on/off = {m['E_warp'] / off['E_warp']:.3f}, "
                f"PSNR on - off = {m['PSNR'] - off['PSNR']:+.2f} dB"
            )
    print(f"# clips in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
