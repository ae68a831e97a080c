"""Options shared by the commands that load the released models."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_source_args(group: argparse._ArgumentGroup) -> None:
    """--weights-dir, --model-config, --no-download, --device, --dtype."""
    group.add_argument(
        "--weights-dir", type=Path, help="folder of weights under their released names"
    )
    group.add_argument(
        "--model-config",
        type=Path,
        help="YAML/JSON with non-released architectures (sections: cleaner, unet, vae, text, controlnet)",
    )
    group.add_argument("--no-download", action="store_true", help="never download; fail if missing")
    group.add_argument("--device", help="cpu, cuda, cuda:1, ... (unset: cuda if available)")
    group.add_argument(
        "--dtype", choices=("fp32", "fp16", "bf16"), help="unset: fp16 on CUDA, fp32 on CPU"
    )
