"""Map a function over items in worker processes with a progress bar, keeping input order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def pmap(
    func: Callable[[T], R],
    items: Sequence[T] | Iterable[T],
    workers: int = 1,
    progress: bool = True,
    desc: str = "",
    chunksize: int = 8,
) -> list[R]:
    """``[func(x) for x in items]``, in ``workers`` processes when > 1, with a tqdm bar."""
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="tile", leave=False)
    try:
        if workers <= 1 or len(items) < 2:
            out = []
            for item in items:
                out.append(func(item))
                bar.update()
            return out
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = []
            for result in pool.map(func, items, chunksize=chunksize):
                out.append(result)
                bar.update()
            return out
    finally:
        bar.close()
