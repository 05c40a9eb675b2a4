"""The scene writer: strips of any height land on the right rows of the rasters, areas add up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from kelpseg.scene.outputs import BLOCK, NODATA, SceneWriter, output_paths
from kelpseg.scene.stitch import VALID, WATER, Strip

HEIGHT, WIDTH = BLOCK * 2 + 77, 40  # a partial last row of blocks


def _writer(tmp_path: Path) -> SceneWriter:
    transform = rasterio.Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 3_800_000.0)
    crs = rasterio.crs.CRS.from_epsg(32611)
    return SceneWriter(tmp_path, "S", crs, transform, WIDTH, HEIGHT, threshold=0.5)


def test_strips_straddling_block_rows_are_written_in_place(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((HEIGHT, WIDTH), dtype=np.float32)
    classes = np.full((HEIGHT, WIDTH), VALID | WATER, np.uint8)
    classes[:, :3] = 0  # fill: nodata in both rasters
    writer = _writer(tmp_path)
    row = 0
    for n in [350, 350, 1, 300, HEIGHT - 1001]:  # borders at 350, 700, 701, 1001: none on a block border
        writer.write(Strip(row, prob[row : row + n], classes[row : row + n]))
        row += n
    assert row == HEIGHT
    stats = writer.finish({"scene_id": "S"}, min_mapping_unit=1)
    paths = output_paths(tmp_path, "S")
    with rasterio.open(paths["probability"]) as src:
        pct = src.read(1)
    with rasterio.open(paths["mask"]) as src:
        mask = src.read(1)
    valid = classes != 0
    assert np.array_equal(pct[valid], np.rint(prob[valid] * 100).astype(np.uint8))
    assert np.all(pct[~valid] == NODATA) and np.all(mask[~valid] == NODATA)
    assert np.array_equal(mask[valid], (prob[valid] >= 0.5).astype(np.uint8))
    kelp = int((mask == 1).sum())
    assert writer.total.pixels["kelp"] == kelp and writer.total.pixels["valid"] == valid.sum()
    assert writer.total.m2["kelp"] == pytest.approx(kelp * 900.0)
    assert stats["n_polygons"] > 0
    staged = {p.name for p in tmp_path.iterdir()}  # the raw rasters are gone, the summary is not written yet
    assert staged == {paths[k].name for k in ("probability", "mask", "polygons")}


def test_strips_must_come_in_order(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    strip = np.zeros((10, WIDTH), np.float32), np.zeros((10, WIDTH), np.uint8)
    writer.write(Strip(0, *strip))
    with pytest.raises(ValueError, match="strip at row 20: expected row 10"):
        writer.write(Strip(20, *strip))
    with pytest.raises(ValueError, match=f"10 of {HEIGHT} rows written"):
        writer.finish({"scene_id": "S"}, min_mapping_unit=1)
    writer.close()
