"""Latent image guidance at full size: the fidelity curve and the cost per step.

Builds one full-size pipeline with random weights (``build_pipeline`` of
``bench_pipeline.py``: the preset's stage-1 cleaner, SD 2.1-base UNet, VAE,
OpenCLIP ViT-H text encoder, LAControlNet), restores one smooth random
``--size`` input x4 (128 -> 512x512) with ``--steps`` spaced DDPM steps, CFG 1
and a fixed seed, once per guidance scale (``RestoreOptions.guidance_scale``,
the v2 release's ``--g_scale`` units) and space, and reports per (space, scale):

* PSNR of the result to the stage-1 output (resized to the output size,
  bicubic antialias, clamped to [0, 1]) and to the input (bicubic x4);
* the latent distance ``||z - c|| / ||c||`` of the sampler's result ``z`` to
  the condition latent ``c``;
* PSNR of ``decode(z)`` (before the colour fix, cropped to the stage-1 size) to
  the stage-1 output: with random weights ``decode(c)`` is not the stage-1
  image, so this is what pixel guidance pulls toward (``decode(c)``'s own PSNR
  is printed as the ceiling of latent guidance).

Cost: seconds per sampling step with guidance minus without (whole restores),
the seconds of the guidance call itself (timed inside the sampler by a wrapper
around the pipeline's ``LatentGuidance``), and the peak memory of one guidance
step alone at the output size, measured in a fresh subprocess that builds only
the VAE (CPU: growth of peak RSS over the RSS before the step; CUDA:
``max_memory_allocated`` over the memory allocated before, after a warm-up).

Prints Markdown tables and draws the curve with Pillow to ``--plot``.

    python benchmarks/bench_guidance.py --quick                      # smoke check, minutes
    python benchmarks/bench_guidance.py --threads 2                  # CPU, 512x512, 10 steps
    python benchmarks/bench_guidance.py --steps 6 --scales 0 0.1 1 --spaces latent
    python benchmarks/bench_guidance.py --device cuda --dtype bf16 --steps 50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DTYPES, build_pipeline  # noqa: E402

from diffbir.restore.pipeline import DiffBIRPipeline, RestoreOptions  # noqa: E402

DEFAULT_PLOT = Path(__file__).resolve().parent / "plots" / "guidance_curve.png"
SPACE_COLOURS = {"latent": (31, 119, 180), "pixel": (214, 39, 40)}
REFERENCE_COLOUR = (110, 110, 110)


@dataclass
class Row:
    """The measurements of one restore."""

    space: str  # "latent", "pixel", or "none" for scale 0
    scale: float
    psnr_stage1: float
    psnr_input: float
    latent_distance: float
    psnr_decoded: float
    sample_s_per_step: float
    guidance_s_per_call: float  # nan without guidance
    relative_move: float  # mean ||z0' - z0|| / ||z0|| of one guidance call; nan without


# ---------------------------------------------------------------- measuring wrappers
class TimedGuidance:
    """Wraps the pipeline's guidance callable and records the seconds of each call and
    how far it moved z0 (``||z0' - z0|| / ||z0||``); every attribute the samplers read
    (``rescale_by_posterior``, ...) is the wrapped one's."""

    def __init__(self, guidance, device: torch.device) -> None:
        self.wrapped = guidance
        self.device = device
        self.seconds: list[float] = []
        self.moves: list[float] = []

    def __getattr__(self, name):
        return getattr(self.wrapped, name)

    def __call__(self, *args, **kwargs):
        sync(self.device)
        start = time.perf_counter()
        out = self.wrapped(*args, **kwargs)
        sync(self.device)
        self.seconds.append(time.perf_counter() - start)
        x0 = args[0]
        self.moves.append(((out - x0).norm() / x0.norm()).item())
        return out


class MeasuredPipeline(DiffBIRPipeline):
    """The pipeline, unchanged, plus two records: the timed guidance of the last run
    and the raw decoded image (before the colour fix), so nothing is decoded twice."""

    last_guidance: TimedGuidance | None = None
    last_decoded: torch.Tensor | None = None

    @classmethod
    def wrap(cls, pipe: DiffBIRPipeline) -> MeasuredPipeline:
        return cls(pipe.cleaner, pipe.stage2, pipe.preset, device=pipe.device, dtype=pipe.dtype)

    def _guidance(self, *args, **kwargs):
        guidance = super()._guidance(*args, **kwargs)
        self.last_guidance = None if guidance is None else TimedGuidance(guidance, self.device)
        return self.last_guidance

    def decode(self, z, tile, overlap):
        self.last_decoded = super().decode(z, tile, overlap)
        return self.last_decoded


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------ metrics
def smooth_input(size: int, seed: int) -> torch.Tensor:
    """A smooth random RGB image [1,3,size,size] in [0,1]: coarse noise, bicubic-upscaled."""
    coarse = torch.rand(1, 3, max(2, size // 16), max(2, size // 16), generator=seeded(seed))
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def to_size(image: torch.Tensor, hw) -> torch.Tensor:
    """``image`` resized (bicubic, antialias) to ``hw`` and clamped to [0, 1], float32 CPU."""
    image = image.detach().float().cpu()
    if tuple(image.shape[-2:]) != tuple(hw):
        image = F.interpolate(image, size=tuple(hw), mode="bicubic", antialias=True)
    return image.clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = (a.float().cpu() - b.float().cpu()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(1.0 / mse)).item()


def latent_distance(z: torch.Tensor, cond: torch.Tensor) -> float:
    """``||z - c|| / ||c||``."""
    z, cond = z.float().cpu(), cond.float().cpu()
    return ((z - cond).norm() / cond.norm()).item()


def decoded_psnr(decoded: torch.Tensor, stage1: torch.Tensor) -> float:
    """PSNR of a decoded latent (cropped to the stage-1 size) to the stage-1 output."""
    h, w = stage1.shape[-2:]
    return psnr(decoded[..., :h, :w].clamp(0, 1), stage1.clamp(0, 1))


# ------------------------------------------------------------------------ restores
def restore_options(args, scale: float, space: str, steps: int | None = None) -> RestoreOptions:
    out_side = int(args.size * args.upscale)
    return RestoreOptions(
        upscale=args.upscale,
        steps=steps or args.steps,
        sampler=args.sampler,
        cfg_scale=1.0,
        guidance_scale=scale,
        guidance_space=space,
        guidance_loss=args.loss,
        color_fix=args.color_fix,
        seed=args.seed,
        # Quick runs diffuse at their own small size rather than the usual 512.
        min_side=min(512, out_side - out_side % 8),
    )


def measure_restore(pipe: MeasuredPipeline, lq: torch.Tensor, args, scale: float, space: str):
    """One restore; returns its :class:`Row` and the result."""
    result = pipe(lq, restore_options(args, scale, space))
    out_hw = result.image.shape[-2:]
    stage1 = to_size(result.stage1, out_hw)
    guidance = pipe.last_guidance
    calls = guidance.seconds if guidance is not None else []
    moves = guidance.moves if guidance is not None else []
    latents = result.intermediates
    row = Row(
        space=space if scale > 0 else "none",
        scale=scale,
        psnr_stage1=psnr(result.image, stage1),
        psnr_input=psnr(result.image, to_size(lq, out_hw)),
        latent_distance=latent_distance(latents["z"], latents["cond_latent"]),
        psnr_decoded=decoded_psnr(pipe.last_decoded, result.stage1),
        sample_s_per_step=result.timings["sample"] / args.steps,
        guidance_s_per_call=mean(calls),
        relative_move=mean(moves),
    )
    return row, result


def condition_ceiling(pipe: MeasuredPipeline, result) -> float:
    """PSNR of ``decode(c)`` to the stage-1 output: where latent guidance converges."""
    with torch.no_grad():
        decoded = pipe.decode(result.intermediates["cond_latent"], None, 0.0)
    return decoded_psnr(decoded, result.stage1)


def run_sweep(pipe: MeasuredPipeline, lq: torch.Tensor, args) -> tuple[list[Row], float]:
    """Scale 0 once (no guidance: the same for both spaces), then every (space, scale > 0)."""
    rows = []
    base, base_result = measure_restore(pipe, lq, args, 0.0, args.spaces[0])
    log(f"scale 0: {base}")
    rows.append(base)
    for space in args.spaces:
        for scale in (s for s in args.scales if s > 0):
            row, _ = measure_restore(pipe, lq, args, scale, space)
            log(f"{space} {scale:g}: {row}")
            rows.append(row)
    return rows, condition_ceiling(pipe, base_result)


def warm_up(pipe: MeasuredPipeline, lq: torch.Tensor, args) -> None:
    """Untimed one-step restores through every path (CUDA kernels, allocator)."""
    for space in args.spaces:
        pipe(lq, restore_options(args, max(args.scales), space, steps=1))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------- memory of one step
def probe_step_memory(space: str, side: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Peak memory and seconds of one guidance step alone at ``side`` x ``side`` pixels.

    Builds only the VAE and a ``LatentGuidance`` as the pipeline's ``_guidance``
    does (decode unclamped, in the model dtype). Meant for a fresh process:
    on CPU the figure is the growth of peak RSS over the RSS before the step.
    """
    from diffbir.diffusion.guidance import LatentGuidance
    from diffbir.models.vae import build_vae, decode_from_latent

    torch.manual_seed(0)
    with torch.device(device):
        vae = build_vae().to(dtype).eval()
    z = torch.randn(1, 4, side // 8, side // 8, device=device)
    guidance = LatentGuidance(
        torch.randn_like(z),
        3000.0 * 0.1,
        space=space,
        decode=lambda x: decode_from_latent(vae, x.to(dtype), clamp=False).float(),
        pixel_target=torch.rand(1, 3, side, side, device=device),
        step_rescale=lambda t: 1.0,
    )
    with torch.no_grad():
        if device.type == "cuda":
            guidance(z, 500)  # warm-up; the CUDA peak can be reset, RSS's cannot
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            before = current_rss_bytes()
        start = time.perf_counter()
        guidance(z, 500)
        sync(device)
        seconds = time.perf_counter() - start
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"space": space, "peak_mib": max(0, peak - before) / 2**20, "seconds": seconds}


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def step_memory_in_subprocess(space: str, side: int, args) -> dict:
    """:func:`probe_step_memory` in a fresh Python process (its peak RSS is its own)."""
    command = [
        sys.executable, __file__, "--probe-memory", space, "--probe-side", str(side),
        "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------ reports
def fidelity_table(rows: list[Row]) -> str:
    lines = [
        "| space | scale | PSNR result→stage 1 (dB) | PSNR result→input x4 (dB) "
        "| ‖z−c‖/‖c‖ | PSNR decode(z)→stage 1 (dB) | ‖Δz0‖/‖z0‖ per call | sample s/step "
        "| guidance s/call |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        call = "-" if math.isnan(r.guidance_s_per_call) else f"{r.guidance_s_per_call:.3g}"
        move = "-" if math.isnan(r.relative_move) else f"{r.relative_move:.2e}"
        lines.append(
            f"| {r.space} | {r.scale:g} | {r.psnr_stage1:.2f} | {r.psnr_input:.2f} "
            f"| {r.latent_distance:.3f} | {r.psnr_decoded:.2f} | {move} "
            f"| {r.sample_s_per_step:.2f} | {call} |"
        )
    return "\n".join(lines)


def cost_rows(rows: list[Row], memory: dict[str, dict]) -> list[dict]:
    """Per space: s/step with guidance (mean over scales > 0) minus without, the guidance
    call's own seconds, and the probe's peak memory."""
    base = next(r for r in rows if r.scale == 0).sample_s_per_step
    costs = []
    for space, probe in memory.items():
        guided = [r for r in rows if r.space == space]
        if not guided:
            continue
        per_step = sum(r.sample_s_per_step for r in guided) / len(guided)
        per_call = sum(r.guidance_s_per_call for r in guided) / len(guided)
        costs.append(
            {
                "space": space,
                "base_s_per_step": base,
                "s_per_step": per_step,
                "extra_s_per_step": per_step - base,
                "guidance_s_per_call": per_call,
                "probe_seconds": probe["seconds"],
                "peak_mib": probe["peak_mib"],
            }
        )
    return costs


def cost_table(costs: list[dict], side: int, device: torch.device) -> str:
    memory = "peak RSS growth" if device.type == "cpu" else "peak CUDA allocated"
    lines = [
        f"| space | s/step without | s/step with (mean) | extra s/step | guidance call s "
        f"| one step alone s | {memory} of one step at {side}x{side} (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in costs:
        lines.append(
            f"| {c['space']} | {c['base_s_per_step']:.2f} | {c['s_per_step']:.2f} "
            f"| {c['extra_s_per_step']:+.2f} | {c['guidance_s_per_call']:.3g} "
            f"| {c['probe_seconds']:.3g} | {c['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot
def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    span = max(hi - lo, 1e-6)
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 0.999:
        ticks.append(round(value, 6))
        value += step
    return ticks


def draw_panel(image, box, title, scales, series, fonts, reference=None) -> None:
    """One line chart in ``box`` (x0, y0, x1, y1): x the scales at even spacing,
    ``series`` {label: (colour, [y per scale])}, an optional dashed reference line
    ``(label, value)``; the legend sits in a row above the box."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    font, small = fonts
    x0, y0, x1, y1 = box
    values = [v for _, ys in series.values() for v in ys]
    if reference is not None:
        values.append(reference[1])
    ticks = nice_ticks(min(values), max(values))
    lo, hi = ticks[0], ticks[-1]

    def px(i: int) -> float:
        return x0 + (i + 0.5) * (x1 - x0) / len(scales)

    def py(v: float) -> float:
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    draw.text(((x0 + x1) / 2, y0 - 62), title, fill="black", font=font, anchor="ms")
    for t in ticks:
        draw.line([(x0, py(t)), (x1, py(t))], fill=(225, 225, 225))
        draw.text((x0 - 8, py(t)), f"{t:g}", fill="black", font=small, anchor="rm")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    for i, s in enumerate(scales):
        draw.line([(px(i), y1), (px(i), y1 + 5)], fill="black")
        draw.text((px(i), y1 + 8), f"{s:g}", fill="black", font=small, anchor="mt")
    draw.text(
        ((x0 + x1) / 2, y1 + 32),
        "guidance scale g (evenly spaced)",
        fill="black",
        font=font,
        anchor="mt",
    )
    paste_vertical(image, "PSNR (dB)", (x0 - 78, (y0 + y1) / 2), font)
    legend = [(label, colour, False) for label, (colour, _) in series.items()]
    if reference is not None:
        label, value = reference
        dashed(draw, (x0, py(value)), (x1, py(value)), REFERENCE_COLOUR)
        legend.append((label, REFERENCE_COLOUR, True))
    for colour, ys in series.values():
        points = [(px(i), py(v)) for i, v in enumerate(ys)]
        draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour)
    x = x0
    for label, colour, is_dashed in legend:
        y = y0 - 22
        if is_dashed:
            dashed(draw, (x, y), (x + 30, y), colour, dash=6)
        else:
            draw.line([(x, y), (x + 30, y)], fill=colour, width=3)
            draw.ellipse([x + 10, y - 5, x + 20, y + 5], fill=colour)
        draw.text((x + 38, y), label, fill="black", font=small, anchor="lm")
        x += 48 + draw.textlength(label, font=small)


def paste_vertical(image, text: str, centre, font) -> None:
    """``text`` rotated 90 degrees (reading upward), centred at ``centre``."""
    from PIL import Image, ImageDraw

    width = int(ImageDraw.Draw(image).textlength(text, font=font)) + 4
    label = Image.new("RGB", (width, 26), "white")
    ImageDraw.Draw(label).text((width / 2, 13), text, fill="black", font=font, anchor="mm")
    label = label.rotate(90, expand=True)
    image.paste(label, (int(centre[0] - label.width / 2), int(centre[1] - label.height / 2)))


def dashed(draw, start, end, colour, dash: int = 8) -> None:
    """A horizontal dashed line from ``start`` to ``end``."""
    (xa, y), (xb, _) = start, end
    x = xa
    while x < xb:
        draw.line([(x, y), (min(x + dash, xb), y)], fill=colour, width=2)
        x += 2 * dash


def plot_curve(rows: list[Row], ceiling: float, spaces: list[str], path: Path, title: str) -> None:
    """Two panels: PSNR of the result to stage 1, and of decode(z) to stage 1, per space."""
    from PIL import Image, ImageDraw, ImageFont

    scales = sorted({r.scale for r in rows})
    base = next(r for r in rows if r.scale == 0)

    def series(field: str) -> dict:
        out = {}
        for space in spaces:
            by_scale = {r.scale: r for r in rows if r.space == space}
            by_scale[0.0] = base
            ys = [getattr(by_scale[s], field) for s in scales if s in by_scale]
            out[f"{space} space"] = (SPACE_COLOURS.get(space, (0, 0, 0)), ys)
        return out

    width, height = 1400, 640
    image = Image.new("RGB", (width, height), "white")
    fonts = ImageFont.load_default(size=18), ImageFont.load_default(size=15)
    ImageDraw.Draw(image).text((width / 2, 14), title, fill="black", font=fonts[0], anchor="mt")
    draw_panel(
        image, (130, 130, 660, 540), "PSNR of the result (after colour fix) to stage 1",
        scales, series("psnr_stage1"), fonts,
    )  # fmt: skip
    draw_panel(
        image, (840, 130, 1370, 540), "PSNR of decode(z) (before colour fix) to stage 1",
        scales, series("psnr_decoded"), fonts, reference=("decode(c), c = condition", ceiling),
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="v1", choices=("v1", "v2", "v2.1"))
    parser.add_argument("--task", default="sr", choices=("sr", "face", "denoise"))
    parser.add_argument("--sampler", default="spaced")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--size", type=int, default=128, help="input side in pixels")
    parser.add_argument("--upscale", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 0.05, 0.1, 0.2, 0.5, 1])
    parser.add_argument("--spaces", nargs="+", default=["latent", "pixel"])
    parser.add_argument("--loss", default="mse", choices=("mse", "weighted_mse"))
    parser.add_argument("--color-fix", default="wavelet", choices=("wavelet", "adain", "none"))
    parser.add_argument("--seed", type=int, default=231, help="input and sampling seed")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--warmup", type=int, default=None, help="one-step warm-ups (CUDA: 1)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--quick", action="store_true", help="256x256, 3 steps, scales 0 0.1 1")
    parser.add_argument("--probe-memory", choices=("latent", "pixel"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-side", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.scales = 64, 3, [0.0, 0.1, 1.0]
    if 0 not in args.scales:
        args.scales = [0.0, *args.scales]  # the baseline every cost and curve is read against
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.probe_memory:
        print(json.dumps(probe_step_memory(args.probe_memory, args.probe_side, device, dtype)))
        return 0

    out_side = int(args.size * args.upscale)
    memory = {}
    for space in args.spaces:
        memory[space] = step_memory_in_subprocess(space, out_side, args)
        log(f"one {space} guidance step alone: {memory[space]}")

    start = time.perf_counter()
    pipe = MeasuredPipeline.wrap(build_pipeline(args.version, args.task, device, dtype))
    log(f"models built in {time.perf_counter() - start:.0f} s")
    lq = smooth_input(args.size, args.seed)
    for _ in range(args.warmup if args.warmup is not None else int(device.type == "cuda")):
        warm_up(pipe, lq, args)
    rows, ceiling = run_sweep(pipe, lq, args)
    costs = cost_rows(rows, memory)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"# {args.version} {args.task}, {args.sampler}, {args.steps} steps, CFG 1, "
        f"{args.size}->{out_side}, {args.dtype} on {where}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, loss {args.loss}, colour fix {args.color_fix}"
    )
    print(f"\nPSNR of decode(c) (the condition latent) to stage 1: {ceiling:.2f} dB\n")
    print(fidelity_table(rows))
    print()
    print(cost_table(costs, out_side, device))
    title = (
        f"Latent image guidance, {args.version} {args.task}, {out_side}x{out_side}, "
        f"{args.steps} {args.sampler} steps, random weights"
    )
    plot_curve(rows, ceiling, args.spaces, args.plot, title)
    print(f"\nplot: {args.plot}")
    if args.json:
        data = {"rows": [r.__dict__ for r in rows], "ceiling": ceiling, "costs": costs}
        args.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
