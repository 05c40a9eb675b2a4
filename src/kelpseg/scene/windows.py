"""The window grid over a scene region, and the blending weights that stitch windows seamlessly.

Windows are ``size`` pixels square, ``stride = size − overlap`` apart, starting at the region's
first row/column; the last window of a row or column starts at the first position whose window
reaches the region's end, so it may reach past the scene (it reads fill there and its prediction
is cropped back): no pixel is left out and none is counted twice.

Blending: a pixel's probability is ``Σ w_k p_k / Σ w_k`` over the windows ``k`` covering it, with
the separable weight ``w(i, j) = h(i) h(j)``, ``h(i) = sin²(π (i + ½) / size)`` (a Hann window
shifted half a pixel, so it is never zero). Dividing by the accumulated weight normalises every
pixel's weights to sum to one, also at scene borders where fewer windows overlap (no darkening).
At 50 % overlap the shifted Hann windows sum to exactly one already. Without overlap the
weights are all one, so stitched probabilities equal per-window predictions exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kelpseg.errors import KelpsegError


@dataclass(frozen=True)
class WindowGrid:
    """Windows over ``height × width`` pixels: ``row_starts × col_starts`` (region-relative)."""

    height: int
    width: int
    size: int
    stride: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @property
    def overlap(self) -> int:
        return self.size - self.stride

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def windows(self) -> list[tuple[int, int]]:
        """``(row, col)`` of every window, row-major (the order the stitcher needs)."""
        return [(r, c) for r in self.row_starts for c in self.col_starts]


def starts(length: int, size: int, stride: int) -> tuple[int, ...]:
    """Window starts 0, stride, 2·stride, … until a window reaches ``length``."""
    out = [0]
    while out[-1] + size < length:
        out.append(out[-1] + stride)
    return tuple(out)


def overlap_pixels(size: int, overlap: float) -> int:
    """Overlap as a fraction of the window (``0 <= overlap < 1``) -> pixels."""
    if not 0 <= overlap < 1:
        raise KelpsegError(f"window overlap must be a fraction in [0, 1), got {overlap}")
    return round(size * overlap)


def window_grid(height: int, width: int, size: int, overlap: float = 0.5) -> WindowGrid:
    if size < 1:
        raise KelpsegError(f"window size must be positive, got {size}")
    if height < 1 or width < 1:
        raise KelpsegError(f"empty region {height} x {width}")
    stride = size - overlap_pixels(size, overlap)
    return WindowGrid(height, width, size, stride, starts(height, size, stride), starts(width, size, stride))


def blend_weights(size: int, overlap_px: int) -> np.ndarray:
    """(size, size) float32 weights: ones without overlap, else the shifted separable Hann window."""
    if overlap_px == 0:
        return np.ones((size, size), np.float32)
    h = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.outer(h, h).astype(np.float32)
