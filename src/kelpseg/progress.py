"""Progress on the console: bars on a terminal, one plain line per stage in a log.

A progress bar redraws itself with carriage returns and cursor-up escapes; written to a file or a
pipe (``make run > log``, CI) that is kilobytes of noise. So every bar in kelpseg comes from
:func:`bar`: a tqdm bar when its stream is a terminal, else a :class:`LineProgress` that writes one
line when the stage ends (``eda: 40 tiles in 1.2 s``). Training does the same per epoch
(:mod:`kelpseg.train.run`).

Verbosity: the CLI's root ``-v`` sets the ``kelpseg`` logger to INFO; :func:`verbose` is how
library code asks for it (e.g. Lightning's model table is shown only then).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO


def verbose() -> bool:
    """Whether the user asked for more output (the ``kelpseg`` logger is at INFO or lower)."""
    return logging.getLogger("kelpseg").isEnabledFor(logging.INFO)


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where bars go) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced by an object without isatty
        return False


class LineProgress:
    """A tqdm-like counter that prints one line when closed: ``<desc>: <n> <unit>s in <s> s``."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "tile", stream: TextIO | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self._stream = stream
        self._started = time.perf_counter()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for tqdm compatibility; a log line has no live postfix."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        seconds = time.perf_counter() - self._started
        label = f"{self.desc}: " if self.desc else ""
        plural = "" if self.n == 1 else "s"
        stream = sys.stderr if self._stream is None else self._stream
        print(f"{label}{self.n} {self.unit}{plural} in {seconds:.1f} s", file=stream, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(
    total: int | None, desc: str = "", enabled: bool = True, unit: str = "tile", leave: bool = False
) -> Any:
    """A progress bar for ``total`` items: tqdm on a terminal, one closing line otherwise.

    ``enabled=False`` (``--quiet``) gives a silent tqdm. Use it like tqdm: ``update()``, ``close()``
    or as a context manager.
    """
    from tqdm.auto import tqdm

    if not enabled:
        return tqdm(total=total, disable=True)
    if is_terminal():
        return tqdm(total=total, desc=desc, unit=unit, leave=leave)
    return LineProgress(total, desc, unit)
