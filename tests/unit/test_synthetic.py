"""The synthetic dataset generator: layout, formats, determinism, realism, guards."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from scipy import ndimage

from kelpseg.bands import BAND_INDEX, FILL_VALUE, TILE_SIZE
from kelpseg.errors import KelpsegError
from kelpseg.io.metadata import load_metadata
from kelpseg.io.tiles import read_mask, read_raw_tile
from kelpseg.layout import DataLayout
from kelpseg.synthetic import (
    MAX_SHIFT,
    SynthConfig,
    SynthSummary,
    generate_dataset,
    spectral_noise,
    write_preview,
)

SHARED_CSV = Path(__file__).parents[3] / "shared" / "data" / "competition-metadata.csv"
N_TRAIN, N_TEST = 12, 4
SPECTRAL = slice(0, 5)
QA, DEM, NIR = BAND_INDEX["QA"], BAND_INDEX["DEM"], BAND_INDEX["NIR"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tif_md5s(layout: DataLayout) -> dict[str, str]:
    return {str(p.relative_to(layout.root)): _md5(p) for p in sorted(layout.root.rglob("*.tif"))}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataLayout, SynthSummary]:
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = generate_dataset(root, N_TRAIN, N_TEST, seed=0, progress=False)
    return DataLayout(root), summary


@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataLayout, SynthSummary]:
    root = tmp_path_factory.mktemp("synth_larger")
    return DataLayout(root), generate_dataset(root, 48, 0, seed=3, progress=False)


def test_layout_and_file_counts(base: tuple[DataLayout, SynthSummary]) -> None:
    layout, summary = base
    assert len(list(layout.train_images.glob("*_satellite.tif"))) == N_TRAIN
    assert len(list(layout.train_masks.glob("*_kelp.tif"))) == N_TRAIN
    assert len(list(layout.test_images.glob("*_satellite.tif"))) == N_TEST
    assert len(list(layout.truth_test_masks.glob("*_kelp.tif"))) == N_TEST
    assert layout.metadata_csv.is_file() and layout.truth_aoi_table.is_file()
    raw_files = {p.relative_to(layout.raw).parts[0] for p in layout.raw.rglob("*") if p.is_file()}
    assert raw_files == {"train", "test", "metadata_fTq0l2T.csv"}
    assert not list((layout.raw / "test").rglob("*_kelp.tif"))  # test labels live in truth/ only
    assert (summary.n_train, summary.n_test, summary.data_dir) == (N_TRAIN, N_TEST, layout.root)
    assert 1 <= summary.n_aois <= N_TRAIN + N_TEST and summary.seconds > 0
    masks = [read_mask(p) for p in layout.train_masks.glob("*.tif")]
    assert summary.n_with_kelp == sum(int(m.any()) for m in masks)


def test_tile_and_mask_formats(base: tuple[DataLayout, SynthSummary]) -> None:
    layout, _ = base
    dem_nodata = []
    for path in sorted(layout.root.rglob("*_satellite.tif")):
        with rasterio.open(path) as src:
            assert (src.count, src.height, src.width) == (7, TILE_SIZE, TILE_SIZE)
            assert set(src.dtypes) == {"int16"}
            assert src.crs is None
            assert src.profile["compress"] == "deflate"
        tile = read_raw_tile(path)
        assert set(np.unique(tile[QA]).tolist()) <= {0, 1}
        assert not (tile[DEM][tile[DEM] != FILL_VALUE] < 0).any()  # sea is 0 m, land > 0 m
        dem_nodata.append((tile[DEM] == FILL_VALUE).any())
    assert any(dem_nodata), "no tile has DEM nodata offshore"
    for path in [*layout.train_masks.glob("*.tif"), *layout.truth_test_masks.glob("*.tif")]:
        with rasterio.open(path) as src:
            assert (src.count, src.dtypes[0], src.crs) == (1, "uint8", None)
            data = src.read(1)
        assert data.shape == (TILE_SIZE, TILE_SIZE)
        assert set(np.unique(data).tolist()) <= {0, 1}


def test_metadata_csv_matches_files(base: tuple[DataLayout, SynthSummary]) -> None:
    layout, _ = base
    raw = pd.read_csv(layout.metadata_csv, dtype=str)
    assert list(raw.columns) == ["tile_id", "filename", "md5_hash", "filesize_bytes", "type", "in_train"]
    assert len(raw) == 2 * N_TRAIN + N_TEST
    assert set(raw["in_train"]) == {"TRUE", "FALSE"}
    assert all(re.fullmatch(r"[A-Z]{2}\d{6}", t) for t in raw["tile_id"])
    meta = load_metadata(layout.metadata_csv)
    sat = meta[meta["type"] == "satellite"]
    assert sat["tile_id"].is_unique and len(sat) == N_TRAIN + N_TEST
    kelp = meta[meta["type"] == "kelp"]
    assert kelp["in_train"].all() and set(kelp["tile_id"]) == set(sat.loc[sat["in_train"], "tile_id"])
    for row in meta.itertuples():
        split = "train" if row.in_train else "test"
        path = layout.mask_path(row.tile_id) if row.type == "kelp" else layout.image_path(row.tile_id, split)
        assert path.name == row.filename
        assert _md5(path) == row.md5_hash
        assert path.stat().st_size == row.filesize_bytes


def test_aoi_table_and_dem_repeat_across_dates(base: tuple[DataLayout, SynthSummary]) -> None:
    layout, summary = base
    truth = pd.read_csv(layout.truth_aoi_table)
    assert list(truth.columns[:5]) == ["tile_id", "split", "aoi", "shift_x", "shift_y"]
    meta = load_metadata(layout.metadata_csv)
    assert set(truth["tile_id"]) == set(meta["tile_id"]) and truth["tile_id"].is_unique
    assert truth["aoi"].nunique() == summary.n_aois
    assert truth[["shift_x", "shift_y"]].isin(range(MAX_SHIFT + 1)).all().all()
    pairs = [g for _, g in truth.groupby("aoi") if len(g) >= 2]
    assert pairs, "expected an AOI seen at two dates"
    a, b = pairs[0].iloc[0], pairs[0].iloc[1]
    dem_a = read_raw_tile(layout.image_path(a.tile_id, a.split))[DEM]
    dem_b = read_raw_tile(layout.image_path(b.tile_id, b.split))[DEM]
    # tile pixel (y, x) is canvas pixel (y + shift_y, x + shift_x): align both on the canvas.
    y0, x0 = max(a.shift_y, b.shift_y), max(a.shift_x, b.shift_x)
    h, w = TILE_SIZE - abs(a.shift_y - b.shift_y), TILE_SIZE - abs(a.shift_x - b.shift_x)
    over_a = dem_a[y0 - a.shift_y : y0 - a.shift_y + h, x0 - a.shift_x : x0 - a.shift_x + w]
    over_b = dem_b[y0 - b.shift_y : y0 - b.shift_y + h, x0 - b.shift_x : x0 - b.shift_x + w]
    valid = (over_a != FILL_VALUE) & (over_b != FILL_VALUE)
    assert valid.mean() > 0.2
    assert np.corrcoef(over_a[valid], over_b[valid])[0, 1] > 0.99
    np.testing.assert_array_equal(over_a, over_b)  # the DEM is static: identical up to the shift


def test_same_seed_same_bytes_any_workers(base: tuple[DataLayout, SynthSummary], tmp_path: Path) -> None:
    layout, _ = base
    again = DataLayout(tmp_path / "again")
    generate_dataset(again.root, N_TRAIN, N_TEST, seed=0, workers=2, progress=False)
    assert _tif_md5s(again) == _tif_md5s(layout)
    assert again.metadata_csv.read_bytes() == layout.metadata_csv.read_bytes()
    assert again.truth_aoi_table.read_bytes() == layout.truth_aoi_table.read_bytes()


def test_different_seed_differs(base: tuple[DataLayout, SynthSummary], tmp_path: Path) -> None:
    layout, _ = base
    other = DataLayout(tmp_path / "other")
    generate_dataset(other.root, N_TRAIN, N_TEST, seed=1, progress=False)
    ids = set(pd.read_csv(other.metadata_csv)["tile_id"])
    assert ids.isdisjoint(set(pd.read_csv(layout.metadata_csv)["tile_id"]))
    images = {v for k, v in _tif_md5s(layout).items() if k.endswith("_satellite.tif")}
    assert images.isdisjoint(_tif_md5s(other).values())  # (empty masks may coincide)


def test_about_half_of_train_tiles_hold_kelp(larger: tuple[DataLayout, SynthSummary]) -> None:
    _, summary = larger
    assert 0.35 <= summary.n_with_kelp / summary.n_train <= 0.65
    assert 48 / 10 <= summary.n_aois <= 48 / 3  # about one AOI per 6 tiles


def test_kelp_is_bright_nir_water_near_land(larger: tuple[DataLayout, SynthSummary]) -> None:
    layout, _ = larger
    truth = pd.read_csv(layout.truth_aoi_table)
    clean = truth[
        (truth.label_dx == 0) & (truth.label_dy == 0) & ~truth.mislabelled & (truth.kelp_pixels > 0)
    ]
    assert len(clean) >= 5
    for tid in clean["tile_id"]:
        tile = read_raw_tile(layout.image_path(tid, "train"))
        kelp = read_mask(layout.mask_path(tid)).astype(bool)
        assert not (kelp & (tile[QA] == 1)).any()  # no kelp labelled under opaque cloud
        ok = (tile[QA] == 0) & (tile[NIR] != FILL_VALUE)
        dem = tile[DEM]
        assert (dem[kelp] == 0).all()  # sea within DEM coverage, never land
        dist = ndimage.distance_transform_edt(dem <= 0)  # pixels to the nearest land pixel in the tile
        assert np.mean(dist[kelp] <= 12) > 0.9
        water = (dem == 0) & ~ndimage.binary_dilation(kelp, iterations=3) & ok
        assert np.median(tile[NIR][kelp & ok]) > np.median(tile[NIR][water]) + 1500
        red_kelp = np.median(tile[BAND_INDEX["R"]][kelp & ok])
        assert red_kelp < np.median(tile[NIR][kelp & ok])  # vegetation signature


def test_forced_clouds_stripes_and_label_noise(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    cfg = SynthConfig(p_cloud=1.0, p_stripes=1.0, p_misaligned=1.0, mislabelled_fraction=1.0)
    generate_dataset(tmp_path, 3, 1, seed=7, progress=False, config=cfg)
    truth = pd.read_csv(layout.truth_aoi_table).set_index("tile_id")
    for tid, row in truth.iterrows():
        tile = read_raw_tile(layout.image_path(tid, row.split))
        gaps = tile[SPECTRAL] == FILL_VALUE
        assert gaps.any() and (gaps == gaps[0]).all()  # the same stripes in all five bands
        assert 0.05 < gaps[0].mean() < 0.5 and row.stripes
        assert not (tile[QA] == FILL_VALUE).any()
        cloud = (tile[QA] == 1) & ~gaps[0]
        assert cloud.any() and row.cloud_fraction > 0
        assert np.median(tile[SPECTRAL][:, cloud], axis=1).min() > 15_000  # clouds bright in all bands
        if row.split == "train":
            assert row.mislabelled and 0 < max(abs(row.label_dx), abs(row.label_dy)) <= 2
            assert read_mask(layout.mask_path(tid)).mean() > 0.4
        else:  # test truth stays clean
            assert not row.mislabelled and row.label_dx == row.label_dy == 0
            assert not (read_mask(layout.truth_test_masks / f"{tid}_kelp.tif") & (tile[QA] == 1)).any()


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    generate_dataset(tmp_path, 1, 1, seed=0, progress=False)
    with pytest.raises(KelpsegError, match=r"raw: already holds 3 tile file\(s\); refusing to overwrite"):
        generate_dataset(tmp_path, 1, 1, seed=0, progress=False)
    stray = layout.train_images / "ZZ000000_satellite.tif"
    stray.write_bytes(b"old")
    summary = generate_dataset(tmp_path, 2, 0, seed=0, progress=False, overwrite=True)
    assert summary.n_train == 2 and not stray.exists()
    assert not list(layout.test_images.glob("*.tif")) and not list(layout.truth_test_masks.glob("*.tif"))


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="shared competition metadata not present")
def test_tile_ids_from_competition_csv(tmp_path: Path) -> None:
    real = load_metadata(SHARED_CSV)
    sat = real[real["type"] == "satellite"]
    generate_dataset(tmp_path, 2, 1, seed=0, progress=False, tile_ids_from=SHARED_CSV)
    meta = load_metadata(DataLayout(tmp_path).metadata_csv)
    ours = meta[meta["type"] == "satellite"]
    assert set(ours.loc[ours["in_train"], "tile_id"]) <= set(sat.loc[sat["in_train"], "tile_id"])
    assert set(ours.loc[~ours["in_train"], "tile_id"]) <= set(sat.loc[~sat["in_train"], "tile_id"])
    assert len(ours) == 3


def test_tile_ids_from_too_small_csv(tmp_path: Path) -> None:
    csv = tmp_path / "meta.csv"
    csv.write_text(
        "tile_id,filename,md5_hash,filesize_bytes,type,in_train\n"
        "AB123456,AB123456_satellite.tif,0,1,satellite,True\n"
        "AB123456,AB123456_kelp.tif,0,1,kelp,True\n"
        "CD654321,CD654321_satellite.tif,0,1,satellite,False\n"
    )
    with pytest.raises(KelpsegError, match=r"meta.csv: holds 1 train and 1 test tile ids, but 2 train"):
        generate_dataset(tmp_path / "d", 2, 1, progress=False, tile_ids_from=csv)
    generate_dataset(tmp_path / "d", 1, 1, progress=False, tile_ids_from=csv)
    assert DataLayout(tmp_path / "d").image_path("CD654321", "test").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": -1, "n_test": 1}, "n_train >= 0"),
        ({"n_train": 0, "n_test": 0}, "at least one tile"),
        ({"n_train": 1, "n_test": 0, "workers": 0}, "workers must be >= 1"),
        ({"n_train": 1, "n_test": 0, "seed": -3}, "seed must be >= 0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(KelpsegError, match=message):
        generate_dataset(tmp_path, progress=False, **kwargs)


def test_bad_config() -> None:
    with pytest.raises(KelpsegError, match="p_cloud"):
        SynthConfig(p_cloud=1.5)
    with pytest.raises(KelpsegError, match="dates_per_aoi"):
        SynthConfig(dates_per_aoi=(1, 3))


def test_spectral_noise_statistics() -> None:
    rng = np.random.default_rng(0)
    rough, smooth = spectral_noise(rng, 128, [1.0, 3.5])
    for field in (rough, smooth):
        assert field.shape == (128, 128) and field.dtype == np.float32
        assert abs(field.mean()) < 1e-4 and abs(field.std() - 1) < 1e-3
    # a steeper spectrum means smoother fields: smaller neighbour differences
    assert np.abs(np.diff(smooth, axis=1)).mean() < 0.5 * np.abs(np.diff(rough, axis=1)).mean()


def test_write_preview(base: tuple[DataLayout, SynthSummary], tmp_path: Path) -> None:
    layout, _ = base
    out = write_preview(layout.root, tmp_path / "figs" / "preview.png", n_tiles=4)
    assert out == tmp_path / "figs" / "preview.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary files left
    with pytest.raises(KelpsegError, match="no tiles to preview"):
        write_preview(tmp_path / "empty", tmp_path / "x.png")
