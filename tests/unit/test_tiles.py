from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from builders import random_tile
from kelpseg.bands import FILL_VALUE, TILE_SIZE
from kelpseg.errors import TileError
from kelpseg.io.tiles import read_mask, read_raw_tile, read_tile, write_geotiff, write_mask, write_probability


def test_read_tile_fill_becomes_nan_and_band_order(tmp_path: Path) -> None:
    tile = random_tile(1)
    path = write_geotiff(tmp_path / "AA000001_satellite.tif", tile, "int16")
    out = read_tile(path)
    assert out.shape == (7, TILE_SIZE, TILE_SIZE) and out.dtype == np.float32
    assert np.isnan(out[6, :20]).all()
    assert not np.isnan(out[:6]).any()
    np.testing.assert_array_equal(out[1], tile[1].astype(np.float32))
    nir_red = read_tile(path, bands=["NIR", "R"], fill=0.0)
    assert nir_red.shape == (2, TILE_SIZE, TILE_SIZE)
    np.testing.assert_array_equal(nir_red[1], tile[2])
    assert (read_tile(path, bands=["DEM"], fill=-1.0)[0, :20] == -1.0).all()
    np.testing.assert_array_equal(read_raw_tile(path), tile)


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
def test_read_tile_any_numeric_dtype(tmp_path: Path, dtype: str) -> None:
    tile = random_tile(2).astype(np.int32)
    tile[6] = np.abs(tile[6])  # no fill for unsigned
    path = write_geotiff(tmp_path / "t.tif", tile.astype(dtype), dtype)
    np.testing.assert_array_equal(read_tile(path), tile.astype(np.float32))


def test_float_tile_with_fill(tmp_path: Path) -> None:
    tile = random_tile(3).astype(np.float32)
    path = write_geotiff(tmp_path / "t.tif", tile, "float32")
    assert np.isnan(read_tile(path)[6, 0, 0])


def test_wrong_band_count_and_size(tmp_path: Path) -> None:
    six = write_geotiff(tmp_path / "six.tif", random_tile()[:6], "int16")
    with pytest.raises(
        TileError, match=r"six\.tif: expected a satellite tile of 7 band\(s\) x 350 x 350, got 6"
    ):
        read_tile(six)
    small = write_geotiff(tmp_path / "small.tif", random_tile()[:, :300, :350], "int16")
    with pytest.raises(TileError, match=r"small\.tif: .*got 7 x 300 x 350"):
        read_tile(small)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(TileError, match=r"nope\.tif: file not found"):
        read_tile(tmp_path / "nope.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(TileError, match=r"junk\.tif: not a readable GeoTIFF"):
        read_tile(junk)
    good = write_geotiff(tmp_path / "good.tif", random_tile(), "int16")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.tif"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(TileError, match=r"trunc\.tif: (truncated or corrupt|not a readable)"):
        read_tile(trunc)


def test_mask_roundtrip_and_validation(tmp_path: Path) -> None:
    mask = np.zeros((TILE_SIZE, TILE_SIZE), np.uint8)
    mask[10:20, 30:40] = 1
    path = write_mask(tmp_path / "m.tif", mask)
    back = read_mask(path)
    assert back.dtype == np.uint8 and back.shape == (TILE_SIZE, TILE_SIZE)
    np.testing.assert_array_equal(back, mask)
    with rasterio.open(path) as src:
        assert src.count == 1 and src.dtypes[0] == "uint8"
    with pytest.raises(ValueError, match="0/1"):
        write_mask(tmp_path / "bad.tif", mask * 3)
    bad = write_geotiff(tmp_path / "bad.tif", mask * 2, "uint8")
    with pytest.raises(TileError, match=r"bad\.tif: expected mask values 0/1, got \[0, 2\]"):
        read_mask(bad)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_probability_roundtrip_keeps_georeference(tmp_path: Path) -> None:
    transform = from_origin(500000, 4200000, 30, 30)
    src_path = write_geotiff(
        tmp_path / "src.tif", random_tile(), "int16", crs=CRS.from_epsg(32721), transform=transform
    )
    prob = np.random.default_rng(0).random((TILE_SIZE, TILE_SIZE)).astype(np.float32)
    out = write_probability(tmp_path / "p.tif", prob, like=src_path)
    with rasterio.open(out) as dst:
        assert dst.dtypes[0] == "float32"
        assert dst.crs == CRS.from_epsg(32721)
        assert dst.transform == transform
        np.testing.assert_array_equal(dst.read(1), prob)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    path = write_mask(tmp_path / "m.tif", np.ones((TILE_SIZE, TILE_SIZE), np.uint8))
    with pytest.raises(TypeError):
        write_geotiff(path, np.ones((TILE_SIZE, TILE_SIZE)), "not-a-dtype")
    np.testing.assert_array_equal(read_mask(path), 1)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_fill_value_constant() -> None:
    assert FILL_VALUE == -32768
