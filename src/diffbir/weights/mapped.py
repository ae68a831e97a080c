"""Handing memory back to the kernel: a mapped checkpoint's pages once its tensors are
cast, and the C heap's free memory once a model is dropped.

A half-precision load maps a float32 checkpoint (``load_state_dict(mmap=True)``) and
casts each tensor. The file pages it reads stay mapped, and so counted in the
process's resident memory (RSS), until the last tensor of the file is freed: for the
v2.1 models that is the whole 6.6 GB of float32 files on top of the 3.3 GB of bf16
copies, more than a float32 load holds. :func:`release` tells the kernel (Linux
``madvise(MADV_DONTNEED)``) that the pages under a tensor already copied are not
needed: they leave RSS, and were they touched again they would be read from the
file again, unchanged (the mapping is private and never written). Only whole pages
inside the tensor's bytes and inside a file mapping of this process
(:func:`file_ranges`) are released, never anonymous memory. Elsewhere than Linux
both are no-ops.

A model's tensors of a few MB each come from malloc's heap, which glibc keeps when
they are freed: dropping the bf16 text encoder (0.63 GiB) lowered the process's
memory by 0.09 GiB until :func:`trim_heap` handed the rest back.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path

import torch

_MADV_DONTNEED = 4  # <sys/mman.h> on Linux
_PAGE = mmap.PAGESIZE


def file_ranges(maps: str | Path = "/proc/self/maps") -> list[tuple[int, int]]:
    """``(start, end)`` of this process's private mappings of regular files (a path,
    not ``[heap]``, ``[stack]`` or anonymous memory); ``[]`` where there is no
    /proc (not Linux)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        lines = Path(maps).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/") or fields[1][3:4] != "p":
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        ranges.append((start, end))
    return ranges


def pages_inside(start: int, length: int) -> tuple[int, int] | None:
    """The whole pages within ``[start, start + length)``: ``(first, size)``, or None."""
    first = -(-start // _PAGE) * _PAGE
    last = (start + length) // _PAGE * _PAGE
    return (first, last - first) if last > first else None


def release(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    """Drop the resident file pages under ``tensor`` (a CPU tensor whose values have
    been copied) when they lie in one of ``ranges``; True if any were released."""
    if not ranges or tensor.device.type != "cpu" or tensor.numel() == 0:
        return False
    start = tensor.data_ptr()
    inside = pages_inside(start, tensor.numel() * tensor.element_size())
    if inside is None:
        return False
    first, size = inside
    if not any(lo <= first and first + size <= hi for lo, hi in ranges):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(size), _MADV_DONTNEED) == 0


def trim_heap() -> bool:
    """Collect garbage, then return the C heap's free memory to the kernel (glibc's
    ``malloc_trim(0)``) after a model is dropped; False where there is no glibc."""
    import gc

    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return False
