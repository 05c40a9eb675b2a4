"""Worker processes and threads: the start method every worker process uses, and ``pmap``.

The one worker-process policy (:func:`adopt_worker_policy`), applied to the fork server and to
every process it forks (pool workers, DataLoader workers): a worker dies with its parent
(``PR_SET_PDEATHSIG`` on Linux, a parent-pid watchdog elsewhere), so a killed kelpseg leaves no
process behind, and it ignores SIGINT — Ctrl-C reaches the whole process group, and only the
main process should answer it (with one line); workers then die with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from kelpseg.progress import bar as progress_bar

T = TypeVar("T")
R = TypeVar("R")

#: Imported once by the fork server (at its start, the first time a worker is needed), so that
#: workers are forked with them loaded instead of each importing them again.
FORKSERVER_PRELOAD = (
    "kelpseg.worker_process",  # first: the policy holds while the rest is imported
    "numpy",
    "rasterio",
    "torch",
    "matplotlib",
    "kelpseg.io.integrity",
    "kelpseg.prep.aoi",
    "kelpseg.prep.band_stats",
    "kelpseg.prep.eda",
    "kelpseg.prep.plotting",
    "kelpseg.evaluate.baseline",
    "kelpseg.train.dataset",
    "kelpseg.infer.predict",
)


_PR_SET_PDEATHSIG = 1
_WATCHDOG_SECONDS = 0.5


def _set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_WATCHDOG_SECONDS)
        if os.getppid() != parent:
            os._exit(1)


#: Set for the fork server: the pid of the process that starts it (its parent may die first).
PARENT_PID_ENV = "KELPSEG_FORKSERVER_PARENT"


def adopt_worker_policy(watchdog_thread: bool = True, parent: int | None = None) -> None:
    """Make this (worker) process die with its parent and leave Ctrl-C to the main process.

    ``parent``: the pid the parent must have (default: the current parent). ``watchdog_thread``:
    where the parent-death signal is unavailable, poll the parent pid in a daemon thread instead
    (not in the fork server: it must stay single-threaded to fork).
    """
    parent = os.getppid() if parent is None else parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _set_parent_death_signal():
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
        return
    if watchdog_thread:
        threading.Thread(
            target=_watch_parent, args=(parent,), name="kelpseg-parent-watchdog", daemon=True
        ).start()


def _after_fork_in_server_child() -> None:
    adopt_worker_policy(watchdog_thread=True)


def install_in_fork_server() -> None:
    """Run inside the fork server (its first preload): the policy for it and for every child it forks."""
    expected = os.environ.pop(PARENT_PID_ENV, "")
    adopt_worker_policy(watchdog_thread=False, parent=int(expected) if expected.isdigit() else None)
    os.register_at_fork(after_in_child=_after_fork_in_server_child)


def worker_initializer() -> None:
    """``initializer`` of process pools (spawn start method, or pools not from the fork server)."""
    adopt_worker_policy(watchdog_thread=True)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool under the worker policy (fork-server workers that die with this process)."""
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=process_context(), initializer=worker_initializer
    )


def abandon_pool(pool: Executor) -> None:
    """Stop a pool now (an error or Ctrl-C in the caller): cancel queued work, kill its workers.

    ``shutdown(wait=True)`` would first finish every queued item — minutes of work after Ctrl-C.
    """
    pool.shutdown(wait=False, cancel_futures=True)
    processes: dict[Any, Any] = getattr(pool, "_processes", None) or {}
    for proc in list(processes.values()):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            proc.kill()


def process_context() -> BaseContext:
    """The multiprocessing context of every worker process (pools, band stats, DataLoaders).

    ``forkserver``: workers are forked from a clean single-threaded server, never from this
    process. Forking a process whose threads have used rasterio can deadlock the child (GDAL/PROJ
    keep SQLite handles and their locks across ``fork``; seen as a DataLoader worker stuck for
    good in ``sqlite3_finalize`` under PROJ), and this package reads tiles in threads in several
    stages. Python 3.14 makes forkserver the default on Linux for the same reason. Falls back to
    ``spawn`` where there is no fork server (Windows).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))  # no effect once the server runs
    _start_fork_server()
    return ctx


def _start_fork_server() -> None:
    """Start the fork server (and resource tracker) from the main thread with SIGINT ignored.

    Both inherit the ignored SIGINT through exec, so a Ctrl-C during their first seconds of
    imports no longer prints their tracebacks (the fork server's own handler starts only after
    its preload). From the main thread, because the parent-death signal of the server follows
    the thread that started it.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    from multiprocessing import forkserver

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    saved = {k: os.environ.get(k) for k in (PARENT_PID_ENV, "PYTHONWARNINGS")}
    os.environ[PARENT_PID_ENV] = str(os.getpid())
    # After Ctrl-C this process ends at once (kelpseg.errors.exit_for_failure); the tracker then
    # frees the pools' semaphores itself — its warning about them is noise on the user's terminal.
    warn = "ignore:resource_tracker:UserWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [saved["PYTHONWARNINGS"], warn]))
    try:
        forkserver.ensure_running()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        signal.signal(signal.SIGINT, previous)


def pmap(
    func: Callable[[T], R],
    items: Sequence[T] | Iterable[T],
    workers: int = 1,
    progress: bool = True,
    desc: str = "",
    chunksize: int = 8,
    threads: bool = False,
) -> list[R]:
    """``[func(x) for x in items]`` with a progress bar (one closing line when not on a terminal).

    With ``workers > 1`` the work runs in that many processes, or threads when ``threads`` is
    true — right for closures and for I/O-bound work where rasterio and numpy release the GIL.
    """
    items = list(items)
    bar = progress_bar(len(items), desc, enabled=progress)
    try:
        if workers <= 1 or len(items) < 2:
            out = []
            for item in items:
                out.append(func(item))
                bar.update()
            return out
        pool: Executor
        if threads:
            pool, kwargs = ThreadPoolExecutor(max_workers=workers), {}
        else:
            pool = process_pool(workers)
            kwargs = {"chunksize": chunksize}
        try:
            out = []
            for result in pool.map(func, items, **kwargs):
                out.append(result)
                bar.update()
        except BaseException:
            abandon_pool(pool)
            raise
        pool.shutdown()
        return out
    finally:
        bar.close()
