"""Worker processes and threads: the start method every worker process uses, and ``pmap``."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.context import BaseContext
from typing import TypeVar

from kelpseg.progress import bar as progress_bar

T = TypeVar("T")
R = TypeVar("R")

#: Imported once by the fork server (at its start, the first time a worker is needed), so that
#: workers are forked with them loaded instead of each importing them again.
FORKSERVER_PRELOAD = (
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
    return ctx


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
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=process_context())
            kwargs = {"chunksize": chunksize}
        with pool:
            out = []
            for result in pool.map(func, items, **kwargs):
                out.append(result)
                bar.update()
            return out
    finally:
        bar.close()
