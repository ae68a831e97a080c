"""The peak memory of each image of a run, on the device that computes it.

On CUDA it is the allocator's peak (``torch.cuda.max_memory_allocated``, reset before
each image). On the CPU it is the process's peak resident set (Linux's ``VmHWM``, reset
through ``/proc/self/clear_refs``): the weights, the libraries and the image's
activations together. Where neither can be reset, the process's high-water mark
(``ru_maxrss``) is read, which never falls.
"""

from __future__ import annotations

import os
import sys


class PeakMemory:
    """``reset()`` before an image, ``read()`` after it: its peak in bytes (or None)."""

    def __init__(self, device) -> None:
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.resettable = self.cuda or _can_clear_refs()
        if self.cuda:
            self.kind = "CUDA peak allocated"
        elif self.resettable:
            self.kind = "peak RSS"
        else:
            self.kind = "process peak RSS (high-water mark)"

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            _clear_refs()

    def read(self) -> int | None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.resettable:
            return _vm_hwm()
        try:
            import resource
        except ImportError:  # pragma: no cover - Windows
            return None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def _clear_refs() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (Linux 4.0+)
        return True
    except OSError:
        return False


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _can_clear_refs() -> bool:
    return os.path.exists("/proc/self/clear_refs") and _clear_refs() and _vm_hwm() is not None
