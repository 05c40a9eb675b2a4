"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback.

:func:`failure_message` is the one place that turns the failures a user can cause or meet
(kelpseg's own errors, OS errors such as a full or read-only disk, Ctrl-C) into that line and
its exit code.

Exit status (as click's): **2** for a usage error (:class:`UsageError`: an option, a config value
or a sweep space that is wrong; fix the command), **1** for any other :class:`KelpsegError` or OS
error, a runtime failure (a file missing or malformed, a stage not run yet, a run directory in
the way, a full disk; fix the inputs or run the earlier stage), **130** after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import NoReturn

#: Exit code of a run stopped by Ctrl-C / SIGINT (128 + SIGINT, the shell convention).
EXIT_INTERRUPTED = 130
#: Exit code of a failure at run time (bad input, full disk, ...).
EXIT_FAILURE = 1
#: Exit code of a usage error (a wrong option or config value), as click's own.
EXIT_USAGE = 2


class KelpsegError(Exception):
    """An error caused by the user's input (files, options), not by a bug."""


class UsageError(KelpsegError):
    """The command's options or configuration are wrong (exit status 2)."""


class TileError(KelpsegError):
    """A tile or mask file is missing, unreadable or not what the competition format says."""


class MetadataError(KelpsegError):
    """The metadata CSV is missing, unreadable or inconsistent."""


class StageNotRunError(KelpsegError):
    """A stage's input (the output of an earlier stage) is missing."""

    @classmethod
    def missing(
        cls, path: object, command: str, target: str | None = None, what: str = ""
    ) -> StageNotRunError:
        """``<path>[: what] not found: run `kelpseg <command>` first (make <target>)``."""
        where = f"{path}: {what} not found" if what else f"{path} not found"
        return cls(f"{where}: run {run_hint(command, target)} first")


class WriteError(KelpsegError):
    """An output could not be written completely (disk full, read-only, failing file system)."""


class Interrupted(BaseException):
    """Ctrl-C / SIGINT, with what the user can do next (``hint``) when a stage knows it.

    Not a ``KeyboardInterrupt``: click (under typer) turns those into "Aborted!" and exit 1.
    :func:`raise_interrupted_on_sigint` makes SIGINT raise this instead.
    """

    def __init__(self, hint: str = "") -> None:
        super().__init__(hint)
        self.hint = hint


def _on_sigint(signum: int, frame: object) -> None:
    raise Interrupted()


def raise_interrupted_on_sigint() -> None:
    """SIGINT raises :class:`Interrupted` in the main thread (the command line's handler)."""
    import signal

    signal.signal(signal.SIGINT, _on_sigint)


def run_hint(command: str, target: str | None = None) -> str:
    """How to run a stage: the ``kelpseg`` command, the make target in brackets."""
    return f"`kelpseg {command}`" + (f" (make {target})" if target else "")


_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM}


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def os_error_message(exc: OSError) -> str:
    """One line for an OS error: the file it concerns and the system's reason."""
    reason = exc.strerror or _first_line(str(exc)) or type(exc).__name__
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    elif exc.errno == errno.EROFS:
        reason = "read-only file system"
    text = f"{' -> '.join(files)}: {reason}" if files else reason
    if exc.errno in _WRITE_ERRNOS and files:
        text = f"cannot write {text}"
    return text


def _os_error_in_chain(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and (current.errno is not None or current.filename):
            return current
        current = current.__cause__ or current.__context__
    return None


def failure_message(exc: BaseException) -> tuple[str, int] | None:
    """``(one-line message, exit code)`` for a failure the user should see without a traceback.

    ``None`` for anything else (a bug: let the traceback show). Handled: :class:`KelpsegError`,
    ``KeyboardInterrupt`` (exit 130), and ``OSError`` with an errno or a file name, also when
    it is the cause of another exception (e.g. a library wrapping a full-disk error).
    """
    if isinstance(exc, KeyboardInterrupt | Interrupted):
        hint = getattr(exc, "hint", "") or ""
        text = "interrupted; the outputs of this stage were not written"
        return (f"{text}; {hint}" if hint else text), EXIT_INTERRUPTED
    if isinstance(exc, KelpsegError):
        return str(exc) or type(exc).__name__, EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE
    os_error = exc if isinstance(exc, OSError) else _os_error_in_chain(exc)
    if os_error is not None:
        return os_error_message(os_error), EXIT_FAILURE
    if isinstance(exc, OSError):  # e.g. rasterio's RasterioIOError: message only, naming the file
        return _first_line(str(exc)) or type(exc).__name__, EXIT_FAILURE
    return None


def exit_for_failure(exc: BaseException) -> NoReturn:
    """The command line's last word on ``exc``: one line on stderr and the exit code, or re-raise.

    A bug (anything :func:`failure_message` does not know) is re-raised, traceback and all. After
    Ctrl-C the process ends at once (``os._exit``): worker processes ignore SIGINT and die with
    this process (see :mod:`kelpseg.parallel`), and interpreter shutdown would otherwise wait for
    pool threads still draining queued work.
    """
    failure = failure_message(exc)
    if failure is None:
        raise exc
    message, code = failure
    prefix = "" if code == EXIT_INTERRUPTED else "error: "
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    if code == EXIT_INTERRUPTED:
        os._exit(code)
    sys.exit(code)
