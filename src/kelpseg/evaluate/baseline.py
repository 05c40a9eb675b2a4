"""A non-learned baseline: kelp where NDVI exceeds a threshold inside the water mask.

Kelp canopy floats on the sea and reflects near-infrared like land vegetation, so a single
NDVI threshold restricted to water pixels (DEM <= 0 or DEM nodata) with a clear QA flag is
the natural yardstick for a learned model. The threshold is fitted on a set of tiles (exact
global Dice for every grid value in one pass), then scored on other tiles. To compare it with a
model like with like, fit both thresholds on the same tiles: ``kelpseg run`` fits the NDVI
threshold on each fold's validation tiles, where the run's own threshold is picked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from kelpseg.bands import BANDS, band_positions
from kelpseg.evaluate.metrics import ConfusionCounts
from kelpseg.evaluate.threshold import ThresholdAccumulator
from kelpseg.features.indices import compute_index
from kelpseg.io.tiles import read_mask, read_tile
from kelpseg.parallel import pmap

#: NDVI thresholds tried when fitting.
NDVI_GRID: np.ndarray = np.round(np.arange(-0.30, 0.81, 0.01), 6)
_POSITIONS = band_positions(BANDS)


def ndvi_score(tile: np.ndarray) -> np.ndarray:
    """(NDVI + 1) / 2 inside clear water, 0 elsewhere (land, cloud, nodata): a score in [0, 1]."""
    ndvi = compute_index("NDVI", tile, _POSITIONS, mask_using_qa=True, mask_using_water_mask=True)
    return np.where(np.isnan(ndvi), 0.0, (ndvi + 1.0) / 2.0).astype(np.float32)


def _score_grid(grid: np.ndarray) -> np.ndarray:
    return np.round((np.asarray(grid, dtype=np.float64) + 1.0) / 2.0, 6)


def _accumulate(pair: tuple[str, str], grid: np.ndarray) -> ThresholdAccumulator:
    image_path, mask_path = pair
    acc = ThresholdAccumulator(_score_grid(grid))
    acc.update(ndvi_score(read_tile(image_path)), read_mask(mask_path))
    return acc


def _counts(pair: tuple[str, str], ndvi_threshold: float) -> ConfusionCounts:
    image_path, mask_path = pair
    pred = ndvi_score(read_tile(image_path)) >= np.float32((ndvi_threshold + 1.0) / 2.0)
    return ConfusionCounts.from_arrays(pred, read_mask(mask_path))


@dataclass(frozen=True)
class NdviBaseline:
    ndvi_threshold: float
    train_dice: float
    n_train_tiles: int


def fit_ndvi_baseline(
    image_paths: Sequence[str],
    mask_paths: Sequence[str],
    grid: np.ndarray = NDVI_GRID,
    workers: int = 2,
    progress: bool = True,
) -> NdviBaseline:
    """Fit the NDVI threshold that maximises global kelp Dice on the given tiles.

    ``train_dice`` of the result is that best Dice on those same tiles.
    """
    pairs = list(zip(image_paths, mask_paths, strict=True))
    total = ThresholdAccumulator(_score_grid(grid))
    for acc in pmap(partial(_accumulate, grid=grid), pairs, workers, progress, "ndvi baseline fit"):
        total += acc
    result = total.result()
    return NdviBaseline(round(result.threshold * 2.0 - 1.0, 6), result.dice, len(pairs))


def score_ndvi_baseline(
    baseline: NdviBaseline,
    image_paths: Sequence[str],
    mask_paths: Sequence[str],
    workers: int = 2,
    progress: bool = True,
) -> dict[str, float]:
    """Competition Dice (and companions) of the fitted baseline on other tiles."""
    pairs = list(zip(image_paths, mask_paths, strict=True))
    counts = pmap(partial(_counts, ndvi_threshold=baseline.ndvi_threshold), pairs, workers, progress)
    return sum(counts, ConfusionCounts()).scores()
