"""Window grid, blending weights and the streaming strip accumulator (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from kelpseg.errors import KelpsegError
from kelpseg.scene.stitch import CLOUD, VALID, StripAccumulator
from kelpseg.scene.windows import blend_weights, starts, window_grid


def test_starts_cover_the_length_once() -> None:
    assert starts(700, 350, 350) == (0, 350)
    assert starts(701, 350, 350) == (0, 350, 700)  # the last window reaches past the end
    assert starts(100, 350, 175) == (0,)
    assert starts(1000, 350, 175) == (0, 175, 350, 525, 700)
    grid = window_grid(1000, 400, 350, 0.5)
    assert grid.stride == 175 and len(grid) == 5 * 2 and grid.windows()[:3] == [(0, 0), (0, 175), (175, 0)]
    with pytest.raises(KelpsegError, match="overlap must be a fraction"):
        window_grid(10, 10, 350, 1.0)


def test_hann_weights_never_zero_and_sum_to_one_at_half_overlap() -> None:
    w = blend_weights(350, 175)
    assert w.min() > 0 and w.max() <= 1
    h = np.sqrt(np.diag(w))  # the 1-D window: w(i, i) = h(i)^2
    total = np.zeros(350 + 175)
    total[:350] += h
    total[175:] += h
    assert np.allclose(total[175:350], 1.0, atol=1e-6)  # sin^2 + cos^2
    assert np.array_equal(blend_weights(32, 0), np.ones((32, 32), np.float32))


def _stitch(height: int, width: int, size: int, overlap: float, field: np.ndarray) -> tuple[np.ndarray, int]:
    grid = window_grid(height, width, size, overlap)
    acc = StripAccumulator(height, width, size, blend_weights(size, grid.overlap))
    padded = np.zeros((height + size, width + size), np.float32)
    padded[:height, :width] = field
    out = np.full((height, width), np.nan, np.float32)
    biggest = 0
    for row, col in grid.windows():
        if row != acc.base:
            for strip in acc.advance(row):
                out[strip.row : strip.row + strip.prob.shape[0]] = strip.prob
                biggest = max(biggest, strip.prob.shape[0])
        classes = np.full((size, size), VALID, np.uint8)
        acc.add(row, col, padded[row : row + size, col : col + size], classes)
    for strip in acc.finish():
        out[strip.row : strip.row + strip.prob.shape[0]] = strip.prob
        assert np.all(strip.classes == VALID)
    return out, biggest


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.25])
def test_accumulator_reproduces_a_field_exactly_once_per_pixel(overlap: float) -> None:
    rng = np.random.default_rng(0)
    field = rng.random((530, 290)).astype(np.float32)  # windows' predictions all agree with it
    out, biggest = _stitch(530, 290, 64, overlap, field)
    assert not np.isnan(out).any()
    if overlap == 0:
        assert np.array_equal(out, field)
    else:
        assert np.allclose(out, field, atol=1e-6)
    assert biggest <= 64  # strips never exceed a window's height


def test_accumulator_needs_rows_in_order() -> None:
    acc = StripAccumulator(100, 100, 32, blend_weights(32, 0))
    acc.add(0, 0, np.zeros((32, 32)), np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="advance"):
        acc.add(32, 0, np.zeros((32, 32)), np.zeros((32, 32), np.uint8))
    strips = list(acc.advance(32))
    assert [s.row for s in strips] == [0] and strips[0].prob.shape == (32, 100)
    acc.add(32, 0, np.ones((32, 32)), np.full((32, 32), CLOUD | VALID, np.uint8))
    rest = list(acc.finish())
    assert sum(s.prob.shape[0] for s in rest) == 68 and rest[0].cloud[:, :32].all()
    assert np.isnan(rest[0].prob[:, 32:]).all()  # never covered -> NaN (written as nodata)
