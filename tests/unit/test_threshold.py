"""Threshold search: exact counts for every grid value, ties broken towards 0.5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kelpseg.errors import KelpsegError
from kelpseg.evaluate.evaluate import binarize
from kelpseg.evaluate.metrics import ConfusionCounts
from kelpseg.evaluate.threshold import (
    DEFAULT_GRID,
    ThresholdAccumulator,
    search_threshold,
    search_threshold_folders,
)
from kelpseg.io.tiles import write_mask, write_probability


def _brute_force(probs: list[np.ndarray], masks: list[np.ndarray], t: float) -> ConfusionCounts:
    total = ConfusionCounts()
    for p, m in zip(probs, masks, strict=True):
        total = total + ConfusionCounts.from_arrays(binarize(p, t), m)
    return total


def test_default_grid() -> None:
    assert DEFAULT_GRID[0] == 0.05 and DEFAULT_GRID[-1] == 0.95 and DEFAULT_GRID.size == 91
    assert 0.43 in DEFAULT_GRID.tolist()


def test_counts_match_brute_force_at_every_threshold() -> None:
    rng = np.random.default_rng(1)
    masks = [rng.random((40, 40)) < 0.3 for _ in range(3)]
    # probabilities correlated with truth, including values exactly on grid points
    probs = [np.clip(m * 0.3 + rng.random(m.shape) * 0.7, 0, 1).astype(np.float32) for m in masks]
    probs[0][:5, :5] = np.float32(0.43)
    probs[1][:5, :5] = np.float32(0.5)
    result = search_threshold(iter(probs), iter(masks))
    assert len(result.table) == DEFAULT_GRID.size
    for row in result.table.itertuples(index=False):
        ref = _brute_force(probs, masks, row.threshold)
        assert (row.tp, row.fp, row.fn, row.tn) == (ref.tp, ref.fp, ref.fn, ref.tn), row.threshold
        assert row.dice == pytest.approx(ref.scores()["dice"])
    best = result.table.loc[result.table["dice"].idxmax()]
    assert result.dice == pytest.approx(best["dice"])
    assert result.threshold == pytest.approx(best["threshold"])


def test_value_on_grid_point_is_kelp() -> None:
    prob = np.array([[0.45, 0.44]], np.float32)
    mask = np.array([[1, 0]], np.uint8)
    result = search_threshold([prob], [mask], grid=[0.44, 0.45, 0.46])
    rows = result.table.set_index("threshold")
    assert rows.loc[0.45, "tp"] == 1 and rows.loc[0.45, "fp"] == 0
    assert rows.loc[0.44, "fp"] == 1
    assert rows.loc[0.46, "tp"] == 0
    assert result.threshold == 0.45 and result.dice == 1.0


def test_ties_go_to_the_threshold_closest_to_half() -> None:
    # probabilities far from the grid: every threshold gives the same dice
    prob = np.array([[0.02, 0.98, 0.98, 0.02]], np.float32)
    mask = np.array([[0, 1, 0, 1]], np.uint8)
    result = search_threshold([prob], [mask])
    assert result.threshold == 0.5
    assert result.table["dice"].nunique() == 1
    # a plateau at 0.05..0.40 (kelp at 0.40 is found only up to 0.40): pick 0.40
    prob = np.array([[0.4, 0.1]], np.float32)
    mask = np.array([[1, 0]], np.uint8)
    result = search_threshold([prob], [mask])
    assert result.threshold == 0.4 and result.dice == 1.0
    assert result.dice_at(0.5) == 0.0


def test_accumulators_add_and_to_dict() -> None:
    rng = np.random.default_rng(2)
    p1, p2 = (rng.random((10, 10)).astype(np.float32) for _ in range(2))
    m1, m2 = (rng.random((10, 10)) < 0.5 for _ in range(2))
    a, b = ThresholdAccumulator(), ThresholdAccumulator()
    a.update(p1, m1)
    b.update(p2, m2)
    a += b
    whole = search_threshold([p1, p2], [m1, m2])
    assert a.result().table.equals(whole.table)
    data = whole.to_dict()
    assert set(data) == {"threshold", "dice", "dice_at_0.5", "grid"}
    assert len(data["grid"]) == 91 and set(data["grid"][0]) >= {"threshold", "dice", "tp", "fp", "fn"}


def test_bad_inputs() -> None:
    with pytest.raises(KelpsegError, match="at least one tile"):
        search_threshold([], [])
    with pytest.raises(KelpsegError, match=r"lie in \[0, 1\]"):
        search_threshold([np.zeros((2, 2))], [np.zeros((2, 2))], grid=[0.5, 1.5])
    with pytest.raises(ValueError, match="shape"):
        search_threshold([np.zeros((2, 2))], [np.zeros((3, 2))])


def test_search_on_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    probs, masks = [], []
    for i in range(3):
        m = (rng.random((350, 350)) < 0.1).astype(np.uint8)
        p = np.clip(m * 0.35 + rng.random(m.shape) * 0.6, 0, 1).astype(np.float32)
        write_mask(tmp_path / "gt" / f"T{i}_kelp.tif", m)
        write_probability(tmp_path / "p" / f"T{i}_kelp.tif", p)
        probs.append(p)
        masks.append(m)
    from_folders = search_threshold_folders(tmp_path / "gt", tmp_path / "p", progress=False)
    in_memory = search_threshold(probs, masks)
    assert from_folders.threshold == in_memory.threshold
    assert from_folders.table.equals(in_memory.table)
    write_mask(tmp_path / "p" / "T9_kelp.tif", masks[0])
    with pytest.raises(KelpsegError, match=r"1 extra \(T9\)"):
        search_threshold_folders(tmp_path / "gt", tmp_path / "p", progress=False)
