"""Exceptions that carry a message meant for a person, not a traceback.

The CLI prints ``str(error)`` of any :class:`DiffBIRError` on one line and
exits non-zero; everything else is a bug and keeps its traceback, except
running out of memory (:func:`is_out_of_memory`), which a batch reports for
the image that caused it. :func:`printable` escapes what would break a line.
"""

from __future__ import annotations

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.


class DiffBIRError(Exception):
    """Base class of every error diffbir reports to the user."""


class ImageReadError(DiffBIRError):
    """An input image cannot be read (missing, not an image, corrupt, too large)."""


class CheckpointError(DiffBIRError):
    """A weights file is unreadable, unsafe, or does not fit the model."""


class WeightsNotFoundError(DiffBIRError):
    """A released weights file is needed but absent, and cannot be downloaded."""


class DownloadError(DiffBIRError):
    """A download failed or its checksum did not match."""


class ConfigError(DiffBIRError):
    """A configuration file or option has an invalid value."""


class DiffBIRWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it
    as one ``diffbir: note:`` line."""


def printable(value: object) -> str:
    """``str(value)`` with every non-printable character escaped (``\\n``, ``\\t``,
    ``\\x1b``, ``\\u2028``, undecodable bytes as ``\\udcff``...).

    Every path or user-given name put in a message goes through this, so that a file
    named ``a\\nb.png`` cannot split a message over lines or forge one.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in text
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed: ``MemoryError``, ``torch.OutOfMemoryError``
    (CUDA's), or the CPU allocator's ``RuntimeError`` ("can't allocate memory"). A batch
    reports such an image in one line and goes on with the others."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(exc, oom):
        return True
    text = str(exc)
    return (
        "can't allocate memory" in text
        or "DefaultCPUAllocator" in text
        or "std::bad_alloc" in text
        or "out of memory" in text.lower()
    )
