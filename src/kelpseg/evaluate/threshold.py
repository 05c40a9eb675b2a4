"""Decision-threshold search on kelp probabilities, exact for every grid value in one pass.

For a sorted grid ``t_0 < … < t_{G-1}`` each pixel gets the bin index
``i = #{k : t_k <= p}`` (``np.searchsorted(grid, p, side="right")``). The pixel is kelp at
threshold ``t_k`` (``p >= t_k``) exactly when ``k < i``. Counting bin indices separately for
true-kelp and true-background pixels (``np.bincount``) and taking reversed cumulative sums
gives, for every threshold at once::

    TP(t_k) = Σ_{i > k} kelp_hist[i]        FP(t_k) = Σ_{i > k} background_hist[i]
    FN(t_k) = n_kelp - TP(t_k)              TN(t_k) = n_background - FP(t_k)

These are exact counts (no binning approximation), and the search reads every tile once.
Probabilities and grid values are compared in float32, as
:func:`kelpseg.evaluate.evaluate.binarize` does, so a threshold found here cuts the same
pixels when it is applied to a prediction.
The best threshold maximises the competition Dice ``2TP / (2TP + FP + FN)``; ties go to the
threshold closest to 0.5.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kelpseg.errors import KelpsegError
from kelpseg.evaluate.evaluate import paired_files, read_prediction
from kelpseg.evaluate.metrics import scores_from_counts
from kelpseg.io.tiles import read_mask
from kelpseg.parallel import pmap

#: 0.05, 0.06, …, 0.95 (rounded so that the values are the decimals they print as). Wider than
#: the 0.30-0.70 the reference tried by hand: short-budget models are often calibrated off-centre
#: (a CPU demo fold peaked at 0.30, the old grid's edge), and the best value is always reported.
DEFAULT_GRID: np.ndarray = np.round(np.arange(0.05, 0.951, 0.01), 6)
#: Ties in Dice closer than this are broken towards 0.5.
TIE_TOLERANCE = 1e-12


def _check_grid(grid: Iterable[float]) -> np.ndarray:
    arr = np.round(np.asarray(list(grid), dtype=np.float64), 6)
    if arr.ndim != 1 or arr.size == 0:
        raise KelpsegError("threshold grid must be a non-empty list of numbers")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise KelpsegError(f"threshold grid values must lie in [0, 1], got {arr.min()}..{arr.max()}")
    return np.unique(arr)


@dataclass
class ThresholdResult:
    """Best threshold, its Dice, and ``table`` (one row per grid value: threshold, dice, iou,
    precision, recall, tp, fp, fn, tn)."""

    threshold: float
    dice: float
    table: pd.DataFrame

    def dice_at(self, threshold: float) -> float | None:
        """Dice at a grid value (None when ``threshold`` is not on the grid)."""
        rows = self.table[np.isclose(self.table["threshold"], threshold, atol=1e-9)]
        return None if rows.empty else float(rows["dice"].iloc[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "dice": self.dice,
            "dice_at_0.5": self.dice_at(0.5),
            "grid": self.table.to_dict(orient="records"),
        }


class ThresholdAccumulator:
    """Streaming form of :func:`search_threshold`: ``update`` per tile, then ``result``."""

    def __init__(self, grid: Iterable[float] = DEFAULT_GRID) -> None:
        self.grid = _check_grid(grid)
        self._grid32 = self.grid.astype(np.float32)
        self.kelp_hist = np.zeros(self.grid.size + 1, dtype=np.int64)
        self.background_hist = np.zeros(self.grid.size + 1, dtype=np.int64)

    def update(self, prob: np.ndarray, mask: np.ndarray) -> None:
        prob = np.asarray(prob)
        mask = np.asarray(mask)
        if prob.shape != mask.shape:
            raise ValueError(f"probability shape {prob.shape} != mask shape {mask.shape}")
        bins = np.searchsorted(self._grid32, prob.astype(np.float32, copy=False).ravel(), side="right")
        kelp = mask.ravel().astype(bool, copy=False)
        self.kelp_hist += np.bincount(bins[kelp], minlength=self.grid.size + 1)
        self.background_hist += np.bincount(bins[~kelp], minlength=self.grid.size + 1)

    def __iadd__(self, other: ThresholdAccumulator) -> ThresholdAccumulator:
        if not np.array_equal(self.grid, other.grid):
            raise ValueError("cannot add accumulators over different grids")
        self.kelp_hist += other.kelp_hist
        self.background_hist += other.background_hist
        return self

    def counts(self) -> pd.DataFrame:
        """Exact tp/fp/fn/tn for every grid value."""
        # pixels with bin index > k, for k = 0..G-1
        tp = np.cumsum(self.kelp_hist[::-1])[::-1][1:]
        fp = np.cumsum(self.background_hist[::-1])[::-1][1:]
        n_kelp, n_bg = int(self.kelp_hist.sum()), int(self.background_hist.sum())
        return pd.DataFrame({"threshold": self.grid, "tp": tp, "fp": fp, "fn": n_kelp - tp, "tn": n_bg - fp})

    def result(self) -> ThresholdResult:
        return best_threshold(self.counts())


def best_threshold(counts: pd.DataFrame) -> ThresholdResult:
    """Best row of a ``threshold, tp, fp, fn, tn`` table (ties broken towards 0.5).

    The counts may come from one run or be the sum over several (pooled out-of-fold counts).
    """
    counts = counts[["threshold", "tp", "fp", "fn", "tn"]].reset_index(drop=True)
    scores = [scores_from_counts(*row) for row in counts[["tp", "fp", "fn", "tn"]].itertuples(index=False)]
    table = pd.concat([counts[["threshold"]], pd.DataFrame(scores), counts[["tp", "fp", "fn", "tn"]]], axis=1)
    table = table.drop(columns=["macro_dice"])
    grid = table["threshold"].to_numpy(dtype=np.float64)
    dice = table["dice"].to_numpy()
    near_best = dice >= dice.max() - TIE_TOLERANCE
    distance = np.where(near_best, np.abs(grid - 0.5), np.inf)
    best = int(np.argmin(distance))
    return ThresholdResult(threshold=float(grid[best]), dice=float(dice[best]), table=table)


def search_threshold(
    probs: Iterable[np.ndarray],
    masks: Iterable[np.ndarray],
    grid: Iterable[float] = DEFAULT_GRID,
) -> ThresholdResult:
    """Best decision threshold on ``grid`` for paired probability maps and 0/1 masks.

    ``probs`` and ``masks`` may be lists or generators (tiles are consumed one at a time);
    they must have the same length and pairwise shapes.
    """
    acc = ThresholdAccumulator(grid)
    n = 0
    for prob, mask in zip(probs, masks, strict=True):
        acc.update(prob, mask)
        n += 1
    if n == 0:
        raise KelpsegError("threshold search needs at least one tile")
    return acc.result()


def search_threshold_folders(
    gt_dir: str | Path,
    probs_dir: str | Path,
    grid: Iterable[float] = DEFAULT_GRID,
    workers: int = 2,
    progress: bool = True,
) -> ThresholdResult:
    """Threshold search on a folder of float probability ``<tile>_kelp.tif`` against masks.

    Use it on out-of-fold probabilities (for instance an ensemble written with
    ``write_probabilities=True``) to fit the threshold of the final ensemble honestly.
    """
    truth, probs = paired_files(gt_dir, probs_dir, "probability")
    grid_arr = _check_grid(grid)

    def tile(tid: str) -> ThresholdAccumulator:
        prob = read_prediction(probs[tid])
        if not np.issubdtype(prob.dtype, np.floating):
            raise KelpsegError(f"{probs[tid]}: expected float probabilities, got 0/1 labels")
        acc = ThresholdAccumulator(grid_arr)
        acc.update(prob, read_mask(truth[tid]))
        return acc

    total = ThresholdAccumulator(grid_arr)
    for acc in pmap(tile, sorted(truth), workers, progress, "threshold", threads=True):
        total += acc
    return total.result()
