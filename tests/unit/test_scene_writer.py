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


def test_mean_probabilities_per_polygon_in_strips(tmp_path: Path) -> None:
    """Each polygon's mean over the pixels whose centres it holds, nodata left out, whatever the
    strip height (polygons crossing strip borders, a hole, a polygon of nodata only)."""
    from shapely.geometry import Polygon, box

    from kelpseg.scene.outputs import mean_probabilities

    transform = rasterio.Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 3_800_000.0)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 101, (20, 16)).astype(np.uint8)
    data[12:14, 0:2] = NODATA
    data[5, 5] = NODATA
    path = tmp_path / "p.tif"
    profile = {"driver": "GTiff", "width": 16, "height": 20, "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", **profile, transform=transform, nodata=NODATA) as dst:
        dst.write(data, 1)

    def cells(r0: int, c0: int, r1: int, c1: int) -> Polygon:  # pixel rows r0..r1-1, cols c0..c1-1
        x0, y0 = transform @ (c0, r0)
        x1, y1 = transform @ (c1, r1)
        return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    ring = cells(2, 2, 9, 9).difference(cells(4, 4, 6, 6))  # a hole of 2 x 2 pixels
    geoms = [ring, cells(8, 10, 18, 12), cells(12, 0, 14, 2), cells(19, 15, 20, 16)]
    inside = np.zeros((4, 20, 16), bool)
    inside[0, 2:9, 2:9] = True
    inside[0, 4:6, 4:6] = False
    inside[1, 8:18, 10:12] = True
    inside[2, 12:14, 0:2] = True
    inside[3, 19, 15] = True
    expected = []
    for k in range(4):
        values = data[inside[k] & (data != NODATA)].astype(float)
        expected.append(values.mean() / 100 if values.size else np.nan)
    assert np.isnan(expected[2]) and not np.isnan(expected[0])
    with rasterio.open(path) as prob:
        for strip_rows in (3, 7, 512):
            got = mean_probabilities(prob, geoms, strip_rows=strip_rows)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, equal_nan=True)
        assert mean_probabilities(prob, []).shape == (0,)
