"""``diffbir train stage1|stage2``: train the restoration module or the ControlNet.

One GPU: ``diffbir train stage1 --config my.yaml``. Several GPUs, nodes or CPU processes:
``accelerate launch -m diffbir train stage2 --config my.yaml`` or ``torchrun`` (DDP; FSDP
and DeepSpeed are refused with a one-line message).
"""

from __future__ import annotations

import argparse

from diffbir.training.config import load_config, parse_overrides

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train stage 1 (restoration module) or stage 2 (ControlNet) on your images",
        description=(
            "Train a DiffBIR stage on a folder of photos (captions from NAME.txt beside each "
            "image), a .txt list, or a .csv/.parquet table (the release's v2.1 layout: "
            "image_path, llava_short, llava_long), degraded on the fly. The shipped presets "
            "are the released recipes; their batch is the total over all processes. The "
            "result loads into `diffbir restore` "
            "(--cleaner OUT/cleaner.safetensors, --controlnet OUT/controlnet.safetensors). "
            "Run under `accelerate launch -m diffbir train ...` or torchrun for several "
            "GPUs (DDP)."
        ),
    )
    p.add_argument("stage", choices=("stage1", "stage2"), help="which stage to train")
    p.add_argument(
        "--config",
        required=True,
        help="a YAML file, or a shipped config: stage1_swinir, stage2_v2, stage2_v21, "
        "stage1_tiny, stage2_tiny",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=2e-4 --set data.source=photos/",
    )
    p.add_argument("--data", help="shorthand for --set data.source=DATA")
    p.add_argument("--output-dir", help="shorthand for --set run.output_dir=DIR")
    p.add_argument("--max-steps", type=int, help="shorthand for --set run.max_steps=N")
    p.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue from the newest checkpoint of the output dir, or from a checkpoint folder",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an output dir that holds a run: delete its config.yaml, "
        "checkpoints, logs, samples and exported models first (other files are kept); "
        "without --resume or --overwrite such a dir is refused",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML and exit (a starting point for your own)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from diffbir.training.loop import train
    from diffbir.training.stage1 import make_stage1_task
    from diffbir.training.stage2 import make_stage2_task

    overrides = parse_overrides(args.overrides)
    for key, value in (
        ("data.source", args.data),
        ("run.output_dir", args.output_dir),
        ("run.max_steps", args.max_steps),
    ):
        if value is not None:
            overrides.append((key, value))
    cfg = load_config(args.config, args.stage, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    make_task = make_stage1_task if args.stage == "stage1" else make_stage2_task
    train(cfg, make_task, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    return 0
