"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""

from __future__ import annotations


class KelpsegError(Exception):
    """An error caused by the user's input (files, options), not by a bug."""


class TileError(KelpsegError):
    """A tile or mask file is missing, unreadable or not what the competition format says."""


class MetadataError(KelpsegError):
    """The metadata CSV is missing, unreadable or inconsistent."""


class StageNotRunError(KelpsegError):
    """A stage's input (the output of an earlier stage) is missing."""
