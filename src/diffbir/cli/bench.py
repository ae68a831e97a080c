"""``diffbir bench``: restore a test set with several configurations and compare them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffbir.cli.common import add_model_source_args, notes_as_lines
from diffbir.config.presets import TASK_CHOICES
from diffbir.errors import ConfigError, printable

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

DEFAULT_METRICS = "psnr,ssim,lpips,niqe"

_DESCRIPTION = """\
Benchmark restoration settings on a test set. The LQ images are made from HQ_DIR by
`diffbir degrade` (--degradation, --degradation-seed; kept in BENCH/data/, measured
against the pipeline's HQ in BENCH/data/hq) or given with --lq (measured against
HQ_DIR, paired by file name). Each configuration restores them through the restore
command's own job into BENCH/<config>/images/, records each image's time and peak
memory, and is measured with `diffbir eval`'s metrics (BENCH/<config>/result.json).
BENCH/report.md holds one row per configuration and the plots (fidelity against
realness per guidance scale; quality against time per image).

A rerun resumes: finished images and measured configurations are kept, so adding a
configuration runs only that one. Every file is written whole or not at all.

configurations (--configs, comma-separated, or --config repeated):
  MODEL[:KEY=VALUE[/VALUE...]]...
  MODEL  v1, v2, v2.1 (diffbir = v2.1) or hypir; v2/v2.1 names both
  KEY    sampler, steps, cfg (--cfg-scale), guidance (--guidance-scale),
         strength (--strength); VALUE/VALUE makes a grid (every combination)
  Each is named for its folder: v2.1:steps=10:guidance=0.5 is v2.1_steps10_guidance0.5.
"""

_EPILOG = """\
examples:
  diffbir bench hq/ -o bench --configs v2.1:guidance=0/0.5/1,hypir
  diffbir bench hq/ -o bench --config v2.1:steps=10/20 --config v2:sampler=spaced:steps=50
  diffbir bench hq/ --lq lq_x4/ -o bench_x4 --configs v2.1,hypir --metrics psnr,lpips,niqe
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand to the ``diffbir`` parser."""
    p = subparsers.add_parser(
        "bench",
        help="compare restoration settings on a test set (metrics, time, memory, plots)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("hq", nargs="+", metavar="HQ_DIR", help="reference images: folders or files")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="BENCH")
    p.add_argument("--configs", action="append", default=[], metavar="LIST")
    p.add_argument("--config", action="append", default=[], metavar="SPEC", dest="configs")
    p.add_argument("--lq", nargs="+", metavar="LQ", help="use these LQ images instead")
    p.add_argument(
        "--degradation",
        default="codeformer",
        metavar="NAME|FILE",
        help="diffbir degrade's --pipeline (default: codeformer)",
    )
    p.add_argument("--degradation-seed", type=int, default=0, help="its --seed (default: 0)")
    p.add_argument("--size", type=int, metavar="S", help="crop each HQ image to S x S first")
    p.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        metavar="LIST",
        help=f"diffbir eval's metrics (default: {DEFAULT_METRICS})",
    )
    p.add_argument("--crop-border", type=int, default=0, metavar="N", help="as diffbir eval's")
    p.add_argument("--y-channel", action="store_true", help="as diffbir eval's")
    g = p.add_argument_group("restoring (every configuration)")
    g.add_argument("--task", choices=TASK_CHOICES, default="sr")
    g.add_argument("--upscale", type=float, help="default: 1, or HQ/LQ width with --lq")
    g.add_argument("--seed", type=int, help="restore seed (default: RestoreOptions')")
    g.add_argument("--min-side", type=int, help="as diffbir restore's")
    g.add_argument("--captioner", metavar="NAME", help="as diffbir restore's")
    add_model_source_args(g)
    p.add_argument("--no-plots", action="store_true", help="report.md without plots")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with notes_as_lines():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from diffbir.bench import report
    from diffbir.bench.grid import parse_configs
    from diffbir.bench.run import BenchSetup, run_bench
    from diffbir.config.settings import resolve_device
    from diffbir.metrics.evaluate import EvalOptions
    from diffbir.metrics.names import parse_metrics

    configs = parse_configs(args.configs)
    metrics = parse_metrics(args.metrics)
    if args.crop_border < 0:
        raise ConfigError(f"--crop-border must be 0 or more, got {args.crop_border}")
    if args.degradation_seed < 0:
        raise ConfigError(f"--degradation-seed must be 0 or more, got {args.degradation_seed}")
    if not args.no_plots:
        report.pyplot()  # a missing matplotlib is said before any work
    device = resolve_device(args.device)
    setup = BenchSetup(
        hq=args.hq,
        output=args.output,
        configs=configs,
        metrics=metrics,
        eval_options=EvalOptions(
            crop_border=args.crop_border,
            y_channel=args.y_channel,
            weights_dir=args.weights_dir,
            download=not args.no_download,
        ),
        lq=args.lq,
        degradation=args.degradation,
        degradation_seed=args.degradation_seed,
        size=args.size,
        task=args.task,
        restore=dict(
            upscale=args.upscale, seed=args.seed, min_side=args.min_side, captioner=args.captioner
        ),
        loader=dict(
            weights_dir=args.weights_dir,
            model_config=args.model_config,
            download=not args.no_download,
            device=args.device,
        ),
        device=str(device),
        dtype=args.dtype,
        progress=not args.quiet,
    )
    outcomes = run_bench(setup, device_type=device.type)
    source = (
        f"--lq {' '.join(args.lq)}"
        if args.lq
        else (
            f"LQ made by diffbir degrade --pipeline {args.degradation} --seed {args.degradation_seed}"
        )
    )
    header = [
        f"HQ: {' '.join(args.hq)}; {source}; task {args.task}; device {device}.",
        f"Configurations: {len(outcomes)}; metrics: {', '.join(m.name for m in metrics)}.",
    ]
    path = report.write_report(
        args.output,
        outcomes,
        metrics,
        header=[printable(h) for h in header],
        plots=not args.no_plots,
    )
    if not args.quiet:
        print(report.table(outcomes, metrics))
        print(f"wrote {printable(path)}", file=sys.stderr)
    return 1 if any(o.failed for o in outcomes) else 0
