"""Every file kelpseg writes goes through here: readers never see half a file under its final name.

A writer writes to a hidden temporary name beside the target (``.<stem>.<pid>-<random>.tmp<suffix>``),
then :func:`atomic_path` checks that the write completed — the file exists, is flushed to disk
(``fsync``), is not empty, and passes the writer's own ``verify`` (GeoTIFFs are read back) —
and only then renames it onto the target. On any failure the temporary file is removed, the old
target is left untouched, and a full or failing disk surfaces as one :class:`WriteError` naming the
file. Temporary files of killed processes (their pid is gone) are removed the first time this
process writes into the same folder.

:func:`stage_outputs` marks a folder whose several outputs must be seen together: a marker file
exists while the stage writes, and :func:`require_complete` (called by the readers downstream)
refuses a folder whose marker is still there because the stage was killed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kelpseg.errors import KelpsegError, WriteError, run_hint

#: Name of the marker of a folder whose stage is writing (or was killed while writing).
INCOMPLETE_MARKER = ".kelpseg-incomplete.json"
_TEMP_RE = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp(\.[^/]*)?$")
_cleaned: set[Path] = set()
_cleaned_lock = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files and folders left in ``folder`` by killed writers; returns them."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _clean_once(folder: Path) -> None:
    key = folder.resolve()
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    clean_stale_temps(folder)


def temp_name(target: Path) -> Path:
    """A hidden temporary sibling of ``target``, stamped with this process's pid."""
    return target.parent / f".{target.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{target.suffix}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _incomplete(target: Path, reason: str) -> WriteError:
    try:
        free = shutil.disk_usage(target.parent).free
        space = f"; {free / 2**20:.1f} MiB free on its file system"
    except OSError:
        space = ""
    return WriteError(f"cannot write {target}: the write did not complete ({reason}){space}")


@contextlib.contextmanager
def atomic_path(target: str | Path, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` once the write is complete.

    The temporary file keeps the target's suffix so that writers that pick a format from the
    extension (pandas, matplotlib, rasterio) behave as for the real name. After the block the
    file is fsync'ed and must exist and be non-empty; ``verify(tmp)`` may check more (raise any
    exception to reject it). On error the temporary file is removed and the old ``target`` (if
    any) is left untouched; OS errors propagate (one-line messages via
    :func:`kelpseg.errors.failure_message`), a rejected file raises :class:`WriteError`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(target.parent)
    tmp = temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
    os.close(fd)
    try:
        yield tmp
        if not tmp.is_file():
            raise _incomplete(target, "the writer left no file")
        _fsync(tmp)
        if tmp.stat().st_size == 0:
            raise _incomplete(target, "0 bytes written")
        if verify is not None:
            try:
                verify(tmp)
            except KelpsegError:
                raise
            except Exception as exc:
                raise _incomplete(target, _reason(exc)) from None
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno == errno.ENOSPC or exc.filename in (str(tmp), tmp):
            exc.filename, exc.filename2 = str(target), None  # name the file the user asked for
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text.replace(" See previous exception for details.", "")
    return text or type(exc).__name__


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_json(target: str | Path, obj: Any, indent: int = 2) -> Path:
    return write_text(target, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_parquet(target: str | Path, df: Any) -> Path:
    """Write a pandas DataFrame as parquet atomically (read back: the footer must parse)."""

    def verify(tmp: Path) -> None:
        import pyarrow.parquet as pq

        pq.read_metadata(tmp)

    with atomic_path(target, verify=verify) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(target)


def save_figure(target: str | Path, fig: Any, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (format from the target's suffix)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=target.suffix.lstrip(".") or "png", **kwargs)
    return target


def ensure_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` and prove a file can be written there, before any long work starts.

    Raises :class:`WriteError` naming the folder (read-only, no permission, a file in the way).
    """
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise WriteError(f"{folder}: {what} is a file, expected a directory")
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_name(folder / "write-probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                probe.unlink()
    except WriteError:
        raise
    except OSError as exc:
        reason = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device"}.get(
            exc.errno or 0, exc.strerror or str(exc)
        )
        raise WriteError(f"{folder}: {what} is not writable ({reason})") from None
    return folder


def safe_child(folder: str | Path, name: str, what: str = "file name") -> Path:
    """``folder / name``, refusing a name that would leave ``folder`` (``..``, absolute, ``/``)."""
    folder = Path(folder)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise KelpsegError(f"{name!r}: not a plain {what} (it must stay inside {folder})")
    path = folder / name
    if os.path.commonpath([os.path.abspath(folder), os.path.abspath(path)]) != os.path.abspath(folder):
        raise KelpsegError(f"{name!r}: {what} leaves {folder}")
    return path


# ---- stage outputs seen together ------------------------------------------------------------------
@contextlib.contextmanager
def stage_outputs(folder: str | Path, command: str, target: str | None = None) -> Iterator[Path]:
    """Mark ``folder`` incomplete while a stage writes into it; the mark goes when the block succeeds.

    A killed or failed stage leaves the marker, so :func:`require_complete` refuses its partial
    outputs downstream and says which command writes them again.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / INCOMPLETE_MARKER
    write_json(marker, {"command": command, "make_target": target, "pid": os.getpid()})
    yield folder
    marker.unlink()
    _fsync_dir(folder)


def require_complete(folder: str | Path, what: str = "outputs") -> None:
    """Raise when the stage that writes ``folder`` did not finish (its marker is still there)."""
    marker = Path(folder) / INCOMPLETE_MARKER
    if not marker.exists():
        return
    try:
        info = json.loads(marker.read_text())
        hint = run_hint(str(info["command"]), info.get("make_target"))
    except (OSError, ValueError, KeyError, TypeError):
        hint = "the stage that writes it"
    raise KelpsegError(
        f"{folder}: {what} incomplete (the stage writing them was interrupted or failed); run {hint} again"
    )
