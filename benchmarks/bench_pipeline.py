"""Time one full-size restoration: stage 1 -> encode -> sample -> decode, random weights.

Builds the released architectures in memory (the stage-1 cleaner of the
preset, SD 2.1-base UNet, VAE, OpenCLIP ViT-H text encoder, LAControlNet) with
random weights, wraps them in :class:`diffbir.restore.pipeline.DiffBIRPipeline` and
restores one ``--size`` square input x ``--upscale`` (default 128 -> 512).
Prints per-stage seconds, seconds per sampling step and per UNet call, the
total, the peak RSS of the process and (CUDA) the peak allocated memory, as a
Markdown table row for ``benchmarks/RESULTS.md``.

    python benchmarks/bench_pipeline.py --device cpu --steps 2 --threads 2
    python benchmarks/bench_pipeline.py --device cuda --dtype bf16 --steps 50
    python benchmarks/bench_pipeline.py --device cuda --dtype bf16 --compile --version v2.1

On CUDA a warm-up restore (same settings) runs first and is not timed.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENIZER_VOCAB = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "fixtures"
    / "tokenizer"
    / "bpe_simple_vocab_16e6.txt.gz"
)
HEADER = (
    "| release | device | dtype | sampler | steps | cfg | output | UNet calls x batch "
    "| stage1 s | encode s | sample s | s/step | s/UNet call | decode s | total s "
    "| peak RSS MiB | peak CUDA MiB |"
)


def build_pipeline(version: str, task: str, device: torch.device, dtype: torch.dtype):
    """The full-size pipeline of ``version``/``task`` with random weights on ``device``."""
    from diffbir.config.presets import get_preset
    from diffbir.models.cleaner import build_cleaner
    from diffbir.models.controlnet import build_controlnet, controlnet_config_from_unet
    from diffbir.models.sd_unet import build_unet
    from diffbir.models.stage2 import Stage2Model
    from diffbir.models.text_encoder import build_text_encoder
    from diffbir.models.tokenizer import OpenCLIPTokenizer
    from diffbir.models.vae import build_vae
    from diffbir.restore.pipeline import DiffBIRPipeline

    preset = get_preset(version, task)
    torch.manual_seed(0)
    # Built directly on the target device with the constructors' own init (weights
    # of a sensible scale, so activations stay finite and timings are realistic).
    with torch.device(device):
        cleaner = build_cleaner(preset.cleaner_arch)
        unet = build_unet()
        controlnet = build_controlnet(controlnet_config_from_unet(unet.config))
        stage2 = Stage2Model(
            unet,
            build_vae(),
            controlnet,
            build_text_encoder(),
            OpenCLIPTokenizer(TOKENIZER_VOCAB),
            prediction=preset.prediction,
        )
    return DiffBIRPipeline(cleaner, stage2.to(dtype), preset, device=device, dtype=dtype)


def count_unet_calls(pipe) -> list[int]:
    """Record the batch size of every UNet forward (a forward pre-hook, nothing replaced)."""
    batches: list[int] = []

    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        batches.append(int(sample.shape[0]))

    pipe.stage2.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return batches


def profiled(fn, rows: int, cuda: bool):
    """Run ``fn`` under ``torch.profiler``; return its result and the top-``rows`` op table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        result = fn()
    key = "cuda_time_total" if cuda else "self_cpu_time_total"
    return result, prof.key_averages().table(sort_by=key, row_limit=rows)


def peak_rss_mib() -> float:
    """Peak resident set size of this process (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="v1", choices=("v1", "v2", "v2.1"))
    parser.add_argument("--task", default="sr", choices=("sr", "face", "denoise"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    parser.add_argument("--steps", type=int, default=None, help="default: 4 on CPU, 50 on CUDA")
    parser.add_argument("--sampler", default=None, help="default: the preset's")
    parser.add_argument("--cfg-scale", type=float, default=None, help="default: the preset's")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels")
    parser.add_argument("--upscale", type=float, default=4.0)
    parser.add_argument("--compile", action="store_true", help="torch.compile UNet+ControlNet")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs (CUDA default 1)")
    parser.add_argument("--no-header", action="store_true", help="print only the table row")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print the N costliest ops"
    )
    args = parser.parse_args(argv)

    from diffbir.restore.pipeline import RestoreOptions

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    dtype_name = args.dtype or ("bf16" if cuda else "fp32")
    steps = args.steps or (50 if cuda else 4)
    warmup = args.warmup if args.warmup is not None else (1 if cuda else 0)

    start = time.perf_counter()
    pipe = build_pipeline(args.version, args.task, device, DTYPES[dtype_name])
    if args.compile:
        pipe.compile()
    build_s = time.perf_counter() - start
    batches = count_unet_calls(pipe)

    lq = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    options = RestoreOptions(
        upscale=args.upscale, steps=steps, sampler=args.sampler, cfg_scale=args.cfg_scale
    )
    for _ in range(warmup):
        pipe(lq, options)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    batches.clear()
    if args.profile:
        result, table = profiled(lambda: pipe(lq, options), args.profile, cuda)
    else:
        result, table = pipe(lq, options), None
    image = result.image
    if not torch.isfinite(image).all():
        print("warning: the output holds non-finite values", file=sys.stderr)

    t = result.timings
    preset = pipe.preset
    cfg = args.cfg_scale if args.cfg_scale is not None else preset.cfg_scale
    sampler = (args.sampler or preset.sampler) + (" (compiled)" if args.compile else "")
    calls = len(batches)
    per_call = t["sample"] / calls if calls else float("nan")
    cuda_mib = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if cuda else "-"
    if not args.no_header:
        gpu = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
        print(
            f"# torch {torch.__version__}, {gpu}, threads {torch.get_num_threads()}, "
            f"models built in {build_s:.1f} s, warm-up runs {warmup}, "
            f"tiles {result.tiles}"
        )
        print(HEADER)
        print("|" + "---|" * HEADER.count(" | ") + "---|")
    print(
        f"| {preset.version} {preset.task} | {device.type} | {dtype_name} | {sampler} | {steps} "
        f"| {cfg:g} | {image.shape[-1]}x{image.shape[-2]} | {calls} x {max(batches, default=0)} "
        f"| {t['stage1']:.2f} | {t['encode']:.2f} | {t['sample']:.2f} "
        f"| {t['sample'] / steps:.3f} | {per_call:.3f} | {t['decode']:.2f} | {t['total']:.2f} "
        f"| {peak_rss_mib():.0f} | {cuda_mib} |"
    )
    if table:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
