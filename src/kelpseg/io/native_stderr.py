"""What C libraries print on file descriptor 2, held back around calls that may print it.

libtiff reports a full disk by printing ``_tiffSeekProc: No space left on device.`` on the
process's stderr, once per failed block, outside Python's logging (and outside rasterio's GDAL
error handler), before the write fails. A command that turns the failure into one line of its
own would still show those lines first. :func:`held_native_stderr` points descriptor 2 at a
temporary file for the duration of a block; afterwards, lines about a full disk are handed to the
caller's list and every other line is written to stderr as it was.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

#: Lines that say the disk is full (the caller reports that itself).
_FULL_DISK = ("no space left on device",)


def _is_full_disk(line: str) -> bool:
    text = line.lower()
    return any(marker in text for marker in _FULL_DISK)


@contextlib.contextmanager
def held_native_stderr(held: list[str]) -> Iterator[None]:
    """Hold back descriptor 2 during the block; full-disk lines go to ``held``, the rest to stderr.

    Without a usable descriptor 2 or temporary file (a full temporary directory), the block runs
    with stderr untouched.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the with statement below)
    except OSError:
        os.close(saved)
        yield
        return
    with tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            rest = []
            for line in text.splitlines(keepends=True):
                if _is_full_disk(line):
                    held.append(line.strip())
                else:
                    rest.append(line)
            if rest:
                with contextlib.suppress(OSError):
                    os.write(2, "".join(rest).encode("utf-8"))
