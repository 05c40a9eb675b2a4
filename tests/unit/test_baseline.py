from pathlib import Path

import numpy as np
import pytest

from kelpseg.bands import FILL_VALUE, TILE_SIZE
from kelpseg.evaluate.baseline import fit_ndvi_baseline, ndvi_score, score_ndvi_baseline
from kelpseg.io.tiles import write_geotiff, write_mask


def _tile(kelp: np.ndarray) -> np.ndarray:
    """Water everywhere (NIR 8000, R 8000 → NDVI 0); kelp pixels NIR 12000 → NDVI 0.2."""
    tile = np.full((7, TILE_SIZE, TILE_SIZE), 8000, np.int16)
    tile[5] = 0
    tile[6] = 0
    tile[1][kelp] = 12000
    tile[6, :, :10] = 50  # a land strip with vegetation: NDVI high but outside the water mask
    tile[1, :, :10] = 16000
    tile[6, -5:, 10:] = FILL_VALUE  # DEM nodata counts as water
    return tile


def test_ndvi_score_masks_land_and_cloud() -> None:
    kelp = np.zeros((TILE_SIZE, TILE_SIZE), bool)
    kelp[100:110, 100:110] = True
    tile = _tile(kelp).astype(np.float32)
    tile[6][tile[6] == FILL_VALUE] = np.nan
    tile[5, 200:210, 200:210] = 1  # cloud
    score = ndvi_score(tile)
    assert score[105, 105] == pytest.approx((0.2 + 1) / 2, abs=1e-6)
    assert score[50, 50] == pytest.approx(0.5)  # water, NDVI 0
    assert score[50, 5] == 0.0  # land
    assert score[205, 205] == 0.0  # cloud
    assert score[-1, 50] == pytest.approx(0.5)  # DEM nodata is water


def test_fit_and_score(tmp_path: Path) -> None:
    images, masks = [], []
    for i in range(3):
        kelp = np.zeros((TILE_SIZE, TILE_SIZE), bool)
        kelp[50 + 10 * i : 70 + 10 * i, 100:130] = True
        images.append(str(write_geotiff(tmp_path / f"T{i}_satellite.tif", _tile(kelp), "int16")))
        masks.append(str(write_mask(tmp_path / f"T{i}_kelp.tif", kelp.astype(np.uint8))))
    base = fit_ndvi_baseline(images, masks, workers=1, progress=False)
    # Any threshold in (0, 0.2] separates perfectly; ties go to the score closest to 0.5 (NDVI 0).
    assert 0.0 < base.ndvi_threshold <= 0.2
    assert base.train_dice == pytest.approx(1.0)
    assert score_ndvi_baseline(base, images, masks, workers=1, progress=False)["dice"] == pytest.approx(1.0)
