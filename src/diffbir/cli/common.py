"""Options shared by the commands that load the released models."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffbir.errors import DiffBIRWarning, printable

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.


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
        "--dtype",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="unset: the release's (fp16 on CUDA, bf16 with --model hypir, fp32 on CPU); "
        "auto: bf16 on GPUs and CPUs that compute it natively, else fp16 on GPUs, fp32 on CPUs",
    )


@contextmanager
def notes_as_lines() -> Iterator[None]:
    """Print the package's own warnings (:class:`~diffbir.errors.DiffBIRWarning`) as
    one-line ``diffbir: note:`` messages, each once; other warnings keep their form."""
    import sys
    import warnings

    seen: set[str] = set()
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, DiffBIRWarning):
            previous(message, category, filename, lineno, file, line)
            return
        text = f"diffbir: note: {printable(message)}"
        if text not in seen:
            seen.add(text)
            print(text, file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DiffBIRWarning)
        warnings.showwarning = show
        yield
