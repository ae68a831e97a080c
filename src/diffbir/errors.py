"""Exceptions that carry a message meant for a person, not a traceback.

The CLI prints ``str(error)`` of any :class:`DiffBIRError` on one line and
exits non-zero; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
