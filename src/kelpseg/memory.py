"""glibc heap tuning for long loops that allocate and free large temporaries (Linux only).

Two opposite needs, each measured where it is used: band-statistics workers run the same batch
shapes over and over, so keeping freed memory saves a page fault per 4 KiB per batch
(:func:`keep_freed_memory`); scene mapping frees batches of varying size for thousands of
windows, so handing freed pages back keeps RSS from creeping with the scene's size
(:func:`release_free_heap`). Elsewhere (not glibc) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any

#: glibc ``mallopt`` parameters (malloc.h) and the values a worker sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_WORKER_MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit systems
_WORKER_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse in this process instead of returning them to the
    kernel; True if it took effect (Linux with glibc), False elsewhere (then nothing changes).

    A batch allocates and frees tens of MB of temporaries (a float copy of the tiles, gathered
    bands, each index). By default glibc serves blocks that large with ``mmap`` and unmaps them
    on free (or trims the heap), so every batch pays a fresh page fault per 4 KiB: measured, a
    fifth to a third of a worker's CPU time, all of it in the kernel. Peak memory is unchanged;
    the worker just keeps it until it exits. Called in band-stats worker processes.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _WORKER_MMAP_THRESHOLD)
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, _WORKER_TRIM_THRESHOLD))


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; nothing elsewhere).

    A batch's activations are freed after every batch, but glibc keeps the freed pages of its
    heap mapped, and batches of different sizes (windows skipped as fill or land) fragment it:
    without trimming, RSS creeps up with the number of batches, i.e. with the scene's size.
    """
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


@functools.cache
def _libc_function(name: str) -> Any:
    """glibc's ``name``, or None (not Linux, or a C library without it, e.g. musl's mallopt)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
