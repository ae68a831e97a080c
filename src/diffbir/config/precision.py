"""Which number format a run computes in: ``--dtype``, resolved once per run.

``None`` keeps each release's own choice (the published images): float16 on CUDA
(bfloat16 for HYPIR, as its app runs), float32 everywhere else. ``"auto"`` picks
the fastest format the hardware runs natively:

* CUDA: bfloat16 where the GPU computes it (Ampere and newer), else float16;
* CPU: bfloat16 where the processor has bfloat16 units (``avx512_bf16`` or
  ``amx_bf16`` on x86, ``bf16`` on Arm), float32 otherwise. Without such units
  PyTorch emulates bfloat16 and runs 10 to 30 times *slower* than float32 (measured
  on an AVX2-only EPYC, benchmarks/RESULTS.md), so ``auto`` never picks it there;
* other devices (``mps``, ``xpu``): float16.

This module reads the processor's feature flags itself and imports nothing heavy,
so that ``--print-config`` can say what ``auto`` chose before any model loads.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

__all__ = ["DTYPE_CHOICES", "bf16_hint", "cpu_bf16_units", "resolve_dtype"]

#: What ``--dtype`` takes.
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")

# x86 flags (Linux /proc/cpuinfo) naming native bfloat16 arithmetic, best first.
_X86_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_ARM_BF16_FLAGS = ("bf16",)


def _linux_flags(cpuinfo: Path) -> set[str]:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _macos_bf16() -> bool:
    try:
        out = subprocess.run(
            ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "1"


def cpu_bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The name of this processor's native bfloat16 feature (``"amx_bf16"``,
    ``"avx512_bf16"``, ``"bf16"``...), or ``None`` where bfloat16 is emulated."""
    if platform.system() == "Darwin":
        return "bf16" if _macos_bf16() else None
    flags = _linux_flags(Path(cpuinfo))
    for name in (*_X86_BF16_FLAGS, *_ARM_BF16_FLAGS):
        if name in flags:
            return name
    return None


def _cuda_bf16() -> bool:
    import torch  # only a CUDA run asks, and it has torch loaded anyway

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_dtype(
    requested: str | None,
    device_type: str,
    model: str = "diffbir",
    *,
    cpu_units: str | None | bool = False,
    cuda_bf16: bool | None = None,
) -> tuple[str, str]:
    """``(dtype, why)``: the format a run on ``device_type`` computes in, and a few
    words on why (for ``--print-config``). ``requested`` is what ``--dtype`` says
    (``None``: the release's own). ``cpu_units``/``cuda_bf16`` stand in for the
    hardware probes (tests); left out, the hardware is asked."""
    if requested not in (None, *DTYPE_CHOICES):
        from diffbir.errors import ConfigError

        choices = ", ".join(DTYPE_CHOICES)
        raise ConfigError(f"--dtype: unknown dtype {requested!r}; choose {choices}")
    if requested not in (None, "auto"):
        return requested, "as asked"
    if requested is None:
        if device_type == "cuda":
            return ("bf16", "HYPIR's release") if model == "hypir" else ("fp16", "the release's")
        return "fp32", "the release's"
    if device_type == "cuda":
        supported = _cuda_bf16() if cuda_bf16 is None else cuda_bf16
        return ("bf16", "auto: the GPU computes bf16") if supported else ("fp16", "auto")
    if device_type == "cpu":
        units = cpu_bf16_units() if cpu_units is False else cpu_units
        if units:
            return "bf16", f"auto: this CPU has bf16 units ({units})"
        return "fp32", "auto: this CPU emulates bf16 (slower than fp32)"
    return "fp16", "auto"


def bf16_hint(dtype: str, device_type: str, *, cpu_units: str | None | bool = False) -> str | None:
    """The one line a float32 CPU run prints on a processor with bfloat16 units, or
    ``None`` (another dtype or device, or no such units)."""
    if dtype != "fp32" or device_type != "cpu":
        return None
    units = cpu_bf16_units() if cpu_units is False else cpu_units
    if not units:
        return None
    # Measured with benchmarks/bench_dtypes.py (RESULTS.md, "bf16 on the CPU").
    if units == "amx_bf16":
        speed = "about 4x as fast: a UNet+ControlNet call in 0.22 of the fp32 time on an AMX Xeon"
    else:
        speed = "about 2x as fast: a whole run in 0.52 of the fp32 time on an AVX512-BF16 EPYC"
    return (
        f"this CPU has bf16 units ({units}): --dtype bf16 (or auto) runs the models in "
        f"bfloat16, {speed}; the images differ slightly from the release's fp32 ones "
        "(about 1 level of 255 on average; see benchmarks/RESULTS.md)"
    )
