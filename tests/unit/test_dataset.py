"""KelpTileDataset, the tile cache and KelpDataModule on a tiny hand-made dataset."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from builders import random_tile, write_dataset
from kelpseg.bands import BANDS, FILL_VALUE, TILE_SIZE
from kelpseg.errors import KelpsegError, StageNotRunError
from kelpseg.features.indices import INDEX_REGISTRY
from kelpseg.io.tiles import read_mask, read_tile, write_geotiff
from kelpseg.layout import DataLayout
from kelpseg.train.cache import TileCache, cache_key
from kelpseg.train.dataset import KelpTileDataset

TRAIN_IDS = ["AB000001", "AB000002", "AB000003", "AB000004"]
TEST_IDS = ["TT000001"]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    return write_dataset(tmp_path_factory.mktemp("data"), TRAIN_IDS, TEST_IDS)


def _paths(layout: DataLayout, ids: list[str]) -> tuple[list[Path], list[Path]]:
    return [layout.image_path(t, "train") for t in ids], [layout.mask_path(t) for t in ids]


def _assert_same_tile(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(np.nan_to_num(a, nan=-1.0), np.nan_to_num(b, nan=-1.0))


# ---- dataset ------------------------------------------------------------------------------------


def test_dataset_items_have_raw_bands_with_nan_and_uint8_masks(layout: DataLayout) -> None:
    images, masks = _paths(layout, TRAIN_IDS[:2])
    ds = KelpTileDataset(images, masks, TRAIN_IDS[:2])
    assert len(ds) == 2
    item = ds[1]
    assert item["tile_id"] == TRAIN_IDS[1]
    assert item["image"].shape == (len(BANDS), TILE_SIZE, TILE_SIZE) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (TILE_SIZE, TILE_SIZE) and item["mask"].dtype == torch.uint8
    raw = random_tile(1)  # what the builder wrote for the second tile
    assert torch.isnan(item["image"][6, :20]).all()  # DEM fill -> NaN
    np.testing.assert_array_equal(item["image"][:5].numpy(), raw[:5].astype(np.float32))
    assert item["mask"].sum().item() == 11 * 10  # builder: rows 100..110, cols 50..59
    no_mask = KelpTileDataset(images, None, TRAIN_IDS[:2])[0]
    assert no_mask["mask"].sum().item() == 0 and no_mask["mask"].dtype == torch.uint8


def test_dataset_rejects_mismatched_lengths(layout: DataLayout) -> None:
    images, masks = _paths(layout, TRAIN_IDS[:2])
    with pytest.raises(ValueError, match="2 image paths for 1 tile ids"):
        KelpTileDataset(images, masks, TRAIN_IDS[:1])


# ---- cache --------------------------------------------------------------------------------------


def test_cache_round_trip_equals_geotiff_read(layout: DataLayout, tmp_path: Path) -> None:
    images, masks = _paths(layout, TRAIN_IDS)
    order = [2, 0, 3, 1]  # input order does not matter: rows follow sorted tile ids
    cache = TileCache.open_or_build(
        tmp_path / "cache",
        [TRAIN_IDS[i] for i in order],
        [images[i] for i in order],
        [masks[i] for i in order],
    )
    assert cache.tile_ids == sorted(TRAIN_IDS)
    assert cache.images.dtype == np.int16 and cache.images.shape == (4, 7, TILE_SIZE, TILE_SIZE)
    assert cache.masks.dtype == np.uint8
    for tid, img, msk in zip(TRAIN_IDS, images, masks, strict=True):
        _assert_same_tile(cache.read_tile(tid), read_tile(img))
        np.testing.assert_array_equal(cache.read_mask(tid), read_mask(msk))
    # built once: the same list opens the same folder, nothing temporary is left behind
    again = TileCache.open_or_build(tmp_path / "cache", TRAIN_IDS, images, masks)
    assert again.folder == cache.folder
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.key]
    assert cache.key == cache_key(TRAIN_IDS, images, masks)
    assert cache_key(TRAIN_IDS[:3], images[:3], masks[:3]) != cache.key
    # a pickled cache (sent to DataLoader workers) carries only its folder and reopens lazily
    clone = pickle.loads(pickle.dumps(cache))
    assert len(pickle.dumps(cache)) < 1000
    _assert_same_tile(clone.read_tile(TRAIN_IDS[0]), read_tile(images[0]))


def test_dataset_reads_the_same_items_from_the_cache(layout: DataLayout, tmp_path: Path) -> None:
    images, masks = _paths(layout, TRAIN_IDS[:2])
    cache = TileCache.open_or_build(tmp_path, TRAIN_IDS[:2], images, masks)
    plain = KelpTileDataset(images, masks, TRAIN_IDS[:2])
    cached = KelpTileDataset(images, masks, TRAIN_IDS[:2], cache=cache)
    for i in range(2):
        a, b = plain[i], cached[i]
        _assert_same_tile(a["image"].numpy(), b["image"].numpy())
        assert torch.equal(a["mask"], b["mask"]) and a["tile_id"] == b["tile_id"]


def test_cache_widens_the_storage_type_when_a_tile_does_not_fit_int16(tmp_path: Path) -> None:
    tile = random_tile(5, dtype="int32")
    tile[0, 0, 0] = 60000
    path = write_geotiff(tmp_path / "ZZ000001_satellite.tif", tile, "int32")
    cache = TileCache.open_or_build(tmp_path / "cache", ["ZZ000001"], [path], None)
    assert cache.index["image_dtype"] == "int32"
    _assert_same_tile(cache.read_tile("ZZ000001"), read_tile(path))
    assert cache.read_tile("ZZ000001")[0, 0, 0] == 60000
    assert (cache.read_raw("ZZ000001")[6, :20] == FILL_VALUE).all()
    assert cache.read_mask("ZZ000001").sum() == 0


def test_cache_refuses_to_build_without_the_disk_space(
    layout: DataLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    from kelpseg.train import cache as cache_module

    # 4 tiles: 4 * 350 * 350 * (7 bands * 2 bytes + 1 mask byte)
    assert cache_module.cache_bytes(4) == 4 * 350 * 350 * 15
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 100 * 2**20))
    images, masks = _paths(layout, TRAIN_IDS)
    with pytest.raises(KelpsegError, match=r"not enough free disk space for the tile cache of 4 tiles"):
        TileCache.open_or_build(tmp_path / "cache", TRAIN_IDS, images, masks)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-built


# ---- data module --------------------------------------------------------------------------------


def _write_split(layout: DataLayout) -> Path:
    ids = TRAIN_IDS + TEST_IDS
    n = len(ids)
    frame = pd.DataFrame(
        {
            "tile_id": ids,
            "original_split": ["train"] * 4 + ["test"],
            "has_kelp": [True, False, True, False, None],
            "kelp_pixels_pct": [0.01, 0.0, 0.02, 0.0, None],
            "qa_ok": [True] * n,
            "qa_corrupted_pixels_pct": [0.0] * n,
            "water_pixels_pct": [0.5, 0.6, 0.7, 0.8, 0.5],
            "almost_all_water": [False] * n,
            "dem_nan_pixels_pct": [0.05] * n,
            "dem_zero_pixels_pct": [0.1, 0.2, 0.3, 0.4, 0.5],
            "split_0": ["train", "train", "val", "val", "test"],
            "split_1": ["val", "val", "train", "train", "test"],
        }
    )
    path = layout.split_path("cross_val")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.sample(frac=1.0, random_state=0).to_parquet(path, index=False)
    return path


def _write_stats(layout: DataLayout) -> Path:
    channels = {
        name: {
            "count": 1,
            "min": 0.0,
            "max": 20000.0,
            "mean": 8000.0,
            "std": 2000.0,
            "q01": 5000.0,
            "q99": 12000.0,
        }
        for name in BANDS
    }
    for name in INDEX_REGISTRY:
        channels[name] = {
            "count": 1,
            "min": -1.0,
            "max": 1.0,
            "mean": 0.0,
            "std": 1.0,
            "q01": -0.5,
            "q99": 0.5,
        }
    path = layout.band_stats_path("nan", True, True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"options": {"fill_value": "nan"}, "n_tiles": 4, "channels": channels}))
    return path


def _config(layout: DataLayout, **kw):
    from kelpseg.train.config import TrainConfig

    base = {
        "data_dir": str(layout.root),
        "encoder": "resnet18",
        "num_workers": 0,
        "batch_size": 2,
        "samples_per_epoch": 4,
    }
    return TrainConfig(**(base | kw))


def test_datamodule_errors_name_the_missing_stage(tmp_path: Path) -> None:
    from kelpseg.train.datamodule import KelpDataModule

    layout = write_dataset(tmp_path / "data", TRAIN_IDS[:1], [])
    config = _config(layout)
    with pytest.raises(StageNotRunError, match="make train-val-test-split-cv"):
        KelpDataModule(config, layout)
    _write_split(layout)
    with pytest.raises(StageNotRunError, match="make calculate-band-stats"):
        KelpDataModule(config, layout)
    _write_stats(layout)
    with pytest.raises(KelpsegError, match=r"no column 'split_5'.*folds available: 0, 1"):
        KelpDataModule(_config(layout, fold=5), layout)


def test_datamodule_folds_loaders_and_transform(layout: DataLayout) -> None:
    from kelpseg.train.datamodule import KelpDataModule

    _write_split(layout)
    _write_stats(layout)
    dm = KelpDataModule(_config(layout, fold=1))
    assert sorted(dm.train_frame["tile_id"]) == TRAIN_IDS[2:]
    assert sorted(dm.val_frame["tile_id"]) == TRAIN_IDS[:2]
    row = dm.train_frame.set_index("tile_id").loc[TRAIN_IDS[2]]
    assert row["image_path"] == str(layout.image_path(TRAIN_IDS[2], "train"))
    assert row["mask_path"] == str(layout.mask_path(TRAIN_IDS[2]))
    assert dm.transform.in_channels == 9 and "NDVI" in dm.band_stats.channels
    weights = dm.sampler_weights()
    assert weights[TRAIN_IDS[2]] == pytest.approx(1.0)  # has kelp: the heaviest training tile
    assert weights[TRAIN_IDS[3]] == pytest.approx(0.01)
    info = dm.split_info()
    assert info["fold"] == 1 and len(info["sha256"]) == 64 and sorted(info["val_tile_ids"]) == TRAIN_IDS[:2]

    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # samples_per_epoch 4 / batch 2
    batch = batches[0]
    assert batch["image"].shape == (2, 7, TILE_SIZE, TILE_SIZE) and batch["mask"].dtype == torch.uint8
    assert set(batch["tile_id"]) <= set(TRAIN_IDS[2:])
    out = dm.transform(batch["image"])
    assert out.shape == (2, 9, 352, 352) and torch.isfinite(out).all()
    val = list(dm.val_dataloader())
    assert [t for b in val for t in b["tile_id"]] == dm.val_frame["tile_id"].tolist()


def test_datamodule_with_cache_and_plain_shuffle(layout: DataLayout) -> None:
    from kelpseg.train.datamodule import KelpDataModule

    _write_split(layout)
    _write_stats(layout)
    dm = KelpDataModule(_config(layout, use_cache=True, use_weighted_sampler=False))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.cache is not None and sorted(dm.cache.tile_ids) == TRAIN_IDS  # train + val: every fold
    other_fold = KelpDataModule(_config(layout, fold=1, use_cache=True, num_workers=1))
    other_fold.setup("fit")
    assert other_fold.cache is not None and other_fold.cache.folder == dm.cache.folder
    val = next(iter(other_fold.val_dataloader()))  # read in a worker process, from the cache
    expected = read_tile(layout.image_path(val["tile_id"][0], "train"))
    _assert_same_tile(val["image"][0].numpy(), expected)
    seen = [t for b in dm.train_dataloader() for t in b["tile_id"]]
    assert sorted(seen) == sorted(dm.train_frame["tile_id"])
