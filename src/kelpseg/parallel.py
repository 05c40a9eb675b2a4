"""Map a function over items in worker processes or threads with a progress bar, in order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


def pmap(
    func: Callable[[T], R],
    items: Sequence[T] | Iterable[T],
    workers: int = 1,
    progress: bool = True,
    desc: str = "",
    chunksize: int = 8,
    threads: bool = False,
) -> list[R]:
    """``[func(x) for x in items]`` with a tqdm bar.

    With ``workers > 1`` the work runs in that many processes, or threads when ``threads`` is
    true — right for closures and for I/O-bound work where rasterio and numpy release the GIL.
    """
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="tile", leave=False)
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
            pool, kwargs = ProcessPoolExecutor(max_workers=workers), {"chunksize": chunksize}
        with pool:
            out = []
            for result in pool.map(func, items, **kwargs):
                out.append(result)
                bar.update()
            return out
    finally:
        bar.close()
