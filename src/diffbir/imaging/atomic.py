"""Files written so that nothing half-done is ever left under a final name.

:func:`atomic_write` writes beside the target under a hidden temporary name of our
own pattern (``.NAME.<pid>-<hex>.tmp``), syncs, and renames it into place; a killed
run's temporary files are found by that pattern and removed by the next run
(:func:`remove_stale_temp_files`). :func:`check_writable_folder` proves an output
folder can be written before minutes of model loading.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

from diffbir.errors import DiffBIRError, printable

__all__ = [
    "ImageWriteError",
    "atomic_write",
    "check_writable_folder",
    "fsync_dir",
    "remove_stale_temp_files",
]


class ImageWriteError(DiffBIRError):
    """An output image cannot be written (unknown format, unwritable folder, ...)."""


# ".NAME.<pid>-<12 hex>.tmp" (and ".NAME.<12 hex>.tmp", written before the pid was added).
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[0-9a-f]{12}\.tmp")


def _temp_path(path: Path) -> Path:
    """A fresh hidden temporary name beside ``path``; the pid tells whose it is."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Run ``write`` on a temporary file next to ``path``, then rename it over ``path``.

    The temporary file is removed on any exception (Ctrl+C included), also one that
    arrives just as the file is created."""
    temp = _temp_path(path)
    fd = None
    try:
        # O_EXCL: never reuse someone else's file; 0o666 lets the umask decide the mode.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(temp, flags, 0o666)
        except FileExistsError:
            temp = None  # not ours: leave it alone
            raise
        f = os.fdopen(fd, "wb")
        fd = None  # closed with f from here on
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if temp is not None:
            with contextlib.suppress(OSError):
                temp.unlink()
        raise
    fsync_dir(path.parent)


def _process_alive(pid: int) -> bool:
    """Whether another process with this id runs on this machine (a guess on the safe
    side: a process we may not signal counts as alive)."""
    if pid == os.getpid():
        return False  # a file of ours older than this run is from a killed earlier run
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike[str], *, before: float) -> list[Path]:
    """Remove the temporary files the writers of :mod:`diffbir.imaging.io` (and :func:`atomic_write`) left in ``folder`` when its process
    was killed: names of our own pattern (``.NAME.<pid>-<hex>.tmp``), last modified
    before ``before`` (a ``time.time()``, the run's start) and whose process is not
    running on this machine. A concurrent writer's live file is newer than the run or
    has a live pid, and is kept. Returns the removed paths; never raises for I/O."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if not match:
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or entry.stat().st_mtime >= before:
                continue
            pid = match.group("pid")
            if pid is not None and _process_alive(int(pid)):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def check_writable_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` (and its parents) if needed and prove that a file can be made in
    it, with a temporary file of our own pattern removed at once.

    Raises:
        ImageWriteError: one line saying why the folder cannot hold the outputs.
    """
    folder = Path(folder)
    shown = printable(folder)
    if folder.exists() and not folder.is_dir():
        raise ImageWriteError(f"{shown}: exists and is not a folder; name a folder for the outputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ImageWriteError(f"{shown}: a part of this path is a file, not a folder") from None
    except OSError as err:
        reason = printable(err.strerror or err)
        raise ImageWriteError(f"{shown}: cannot create this folder ({reason})") from None
    probe = _temp_path(folder / "diffbir-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
    except OSError as err:
        reason = printable(err.strerror or err)
        raise ImageWriteError(f"{shown}: cannot write in this folder ({reason})") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (creations, renames) durable where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
