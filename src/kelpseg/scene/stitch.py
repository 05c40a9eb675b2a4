"""Streaming strip accumulator: window predictions in, finished rows of the scene out.

Windows arrive row-major (all windows of one window row, then the next). A window row starting
at region row ``r`` only touches rows ``r … r + size − 1``, and once the next window row (at
``r + stride``) begins, rows before it can no longer change. The accumulator therefore holds
``size`` rows × (region width + size) columns of weighted sums, weights and pixel classes, hands
out the finished rows and shifts the rest up: memory is independent of the scene's height.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: Pixel class bits kept per pixel while accumulating.
VALID, CLOUD, WATER = 1, 2, 4


@dataclass
class Strip:
    """Finished rows ``row … row + n − 1`` of the region.

    ``prob`` float32 (n, width), NaN where no window covered a pixel (never, on a full grid);
    ``classes`` uint8 bit set of VALID / CLOUD / WATER.
    """

    row: int
    prob: np.ndarray
    classes: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return (self.classes & VALID) != 0

    @property
    def cloud(self) -> np.ndarray:
        return (self.classes & CLOUD) != 0

    @property
    def water(self) -> np.ndarray:
        return (self.classes & WATER) != 0


class StripAccumulator:
    """Accumulate ``w·p`` and ``w`` for windows of one size over a region ``height × width``."""

    def __init__(self, height: int, width: int, size: int, weights: np.ndarray) -> None:
        self.height, self.width, self.size = height, width, size
        self.weights = weights.astype(np.float64)
        self._num = np.zeros((size, width + size), np.float64)
        self._den = np.zeros((size, width + size), np.float64)
        self._classes = np.zeros((size, width + size), np.uint8)
        self.base = 0  # region row of the accumulator's first row

    def add(self, row: int, col: int, prob: np.ndarray, classes: np.ndarray) -> None:
        """A window at region ``(row, col)``; ``row`` must be the current base (see :meth:`advance`)."""
        r = row - self.base
        if r != 0:
            raise ValueError(f"window at row {row}: call advance({row}) first (accumulator at {self.base})")
        sl = (slice(r, r + self.size), slice(col, col + self.size))
        self._num[sl] += self.weights * prob
        self._den[sl] += self.weights
        self._classes[sl] = classes

    def advance(self, row: int) -> Iterator[Strip]:
        """Declare that no window will start before region ``row``: yield rows before it."""
        n = min(row, self.height) - self.base
        if n <= 0:
            return
        if n > self.size:
            raise ValueError(f"cannot advance {n} rows at once (window size {self.size})")
        yield self._take(n)

    def finish(self) -> Iterator[Strip]:
        """Yield every row not yet handed out."""
        while self.base < self.height:
            yield self._take(min(self.size, self.height - self.base))

    def _take(self, n: int) -> Strip:
        w = self.width
        with np.errstate(invalid="ignore", divide="ignore"):
            prob = (self._num[:n, :w] / self._den[:n, :w]).astype(np.float32)
        strip = Strip(self.base, prob, self._classes[:n, :w].copy())
        for arr in (self._num, self._den, self._classes):
            arr[:-n] = arr[n:]
            arr[-n:] = 0
        self.base += n
        return strip
