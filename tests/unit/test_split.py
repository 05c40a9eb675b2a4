"""CV / random split: group-aware, stratified, deterministic, high-kelp tiles dropped, refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kelpseg.bands import TILE_PIXELS
from kelpseg.errors import KelpsegError, StageNotRunError
from kelpseg.io.atomic import write_parquet
from kelpseg.layout import DataLayout
from kelpseg.prep.split import kelp_pct_bin, make_cv_split, make_random_split

N_TRAIN_GROUPS = 160
HIGH_KELP_IDS = ("TR000003", "TR000100")
#: Largest allowed gap between the has_kelp share of a fold's val tiles and the overall share
#: (160 groups of 1–7 tiles, ~60 val tiles per fold).
HAS_KELP_TOLERANCE = 0.08


def eda_table(seed: int = 0, n_groups: int = N_TRAIN_GROUPS, n_test: int = 40) -> pd.DataFrame:
    """A fake EDA table: train tiles in AOIs of 1–7 tiles, tiles of one AOI alike (near-duplicates)."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        group_kelp = rng.random() < 0.6
        group_water = rng.random() < 0.15
        for _ in range(rng.integers(1, 8)):
            kelp = int(rng.integers(1, 9000)) if group_kelp and rng.random() < 0.9 else 0
            qa = int(rng.integers(0, 3) * rng.integers(0, 30000))
            rows.append(("train", g, kelp, qa, group_water))
    for i in range(n_test):
        rows.append(("test", n_groups + i, None, int(rng.integers(0, 100)), False))
    df = pd.DataFrame(
        rows, columns=["split", "aoi_id", "kelp_pixels", "qa_corrupted_pixels", "almost_all_water"]
    )
    prefix = np.where(df["split"] == "train", "TR", "TE")
    df.insert(0, "tile_id", [f"{p}{i:06d}" for i, p in enumerate(prefix)])
    df["kelp_pixels"] = df["kelp_pixels"].astype(float)
    df.loc[df["tile_id"].isin(HIGH_KELP_IDS), "kelp_pixels"] = 0.6 * TILE_PIXELS
    df["kelp_pixels_pct"] = df["kelp_pixels"] / TILE_PIXELS
    df["has_kelp"] = pd.array([None if np.isnan(k) else k > 0 for k in df["kelp_pixels"]], dtype="boolean")
    df["high_kelp_pixels_pct"] = pd.array(
        [None if np.isnan(k) else k > 0.4 for k in df["kelp_pixels_pct"]], dtype="boolean"
    )
    df["qa_ok"] = df["qa_corrupted_pixels"] == 0
    df["high_corrupted_pixels_pct"] = df["qa_corrupted_pixels"] / TILE_PIXELS > 0.4
    return df


def write_eda(root: Path, df: pd.DataFrame | None = None) -> DataLayout:
    layout = DataLayout(root)
    write_parquet(layout.eda_stats, eda_table() if df is None else df)
    return layout


@pytest.fixture(scope="module")
def cv(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataLayout, pd.DataFrame]:
    layout = write_eda(tmp_path_factory.mktemp("split"))
    path = make_cv_split(layout, n_splits=10, seed=42)
    assert path == layout.split_path("cross_val")
    return layout, pd.read_parquet(path)


def _folds(df: pd.DataFrame) -> list[str]:
    return sorted((c for c in df.columns if c.startswith("split_")), key=lambda c: int(c.split("_")[1]))


def test_columns_and_values(cv) -> None:
    _, df = cv
    eda = eda_table()
    assert _folds(df) == [f"split_{k}" for k in range(10)]
    assert "split" not in df.columns and "original_split" in df.columns
    for col in eda.columns.drop("split"):
        assert col in df.columns
    assert {"stratification", "kelp_pct_bin"} <= set(df.columns)
    test = df[df["original_split"] == "test"]
    assert len(test) == 40
    for col in _folds(df):
        assert set(test[col]) == {"test"}
        assert set(df.loc[df["original_split"] == "train", col]) == {"train", "val"}
    test_key = test["stratification"].iloc[0]
    assert test_key.startswith("has_kelp=None-kelp_pct_bin=None-qa_ok=")
    key = df.set_index("tile_id").loc["TR000000", "stratification"]
    assert (
        key.startswith("has_kelp=")
        and "-kelp_pct_bin=" in key
        and key.endswith("-high_corrupted_pixels_pct=False")
    )


def test_no_fold_leaks_a_group(cv) -> None:
    _, df = cv
    train = df[df["original_split"] == "train"]
    for col in _folds(df):
        val_groups = set(train.loc[train[col] == "val", "aoi_id"])
        train_groups = set(train.loc[train[col] == "train", "aoi_id"])
        assert val_groups and not val_groups & train_groups, col


def test_every_train_tile_is_val_exactly_once(cv) -> None:
    _, df = cv
    train = df[df["original_split"] == "train"]
    times_val = (train[_folds(df)] == "val").sum(axis=1)
    assert (times_val == 1).all()


def test_strata_balanced_across_folds(cv) -> None:
    _, df = cv
    train = df[df["original_split"] == "train"]
    overall = train["has_kelp"].astype(bool).mean()
    sizes = []
    for col in _folds(df):
        val = train[train[col] == "val"]
        sizes.append(len(val))
        assert abs(val["has_kelp"].astype(bool).mean() - overall) <= HAS_KELP_TOLERANCE, col
    # folds are of similar size: within 35% of the mean
    assert max(sizes) <= 1.35 * np.mean(sizes) and min(sizes) >= 0.65 * np.mean(sizes)


def test_high_kelp_tiles_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layout = write_eda(tmp_path)
    with caplog.at_level(logging.WARNING, logger="kelpseg.prep.split"):
        df = pd.read_parquet(make_cv_split(layout, n_splits=5))
    assert not set(HIGH_KELP_IDS) & set(df["tile_id"])
    assert len(df) == len(eda_table()) - len(HIGH_KELP_IDS)
    assert all(t in caplog.text for t in HIGH_KELP_IDS)


def test_deterministic_per_seed(cv, tmp_path: Path) -> None:
    _, first = cv
    again = pd.read_parquet(make_cv_split(write_eda(tmp_path / "a"), n_splits=10, seed=42))
    pd.testing.assert_frame_equal(first, again)
    other = pd.read_parquet(make_cv_split(write_eda(tmp_path / "b"), n_splits=10, seed=7))
    assert not first["split_0"].equals(other["split_0"])


def test_kelp_pct_bins() -> None:
    pct = pd.Series([0.0, 1e-5, 0.01, 0.0100001, 0.05, 0.2, np.nan])
    assert kelp_pct_bin(pct).tolist() == ["0", "(0,1%]", "(0,1%]", "(1%,5%]", "(1%,5%]", ">5%", None]


def test_custom_stratification_columns(tmp_path: Path) -> None:
    df = pd.read_parquet(make_cv_split(write_eda(tmp_path), n_splits=3, stratification_columns=["qa_ok"]))
    assert set(df["stratification"]) == {"qa_ok=True", "qa_ok=False"}
    with pytest.raises(KelpsegError, match=r"unknown stratification column\(s\) \['nope'\]"):
        make_cv_split(write_eda(tmp_path), n_splits=3, stratification_columns=["nope"])


def test_random_split(tmp_path: Path) -> None:
    layout = write_eda(tmp_path)
    path = make_random_split(layout, train_size=0.9, seed=1)
    assert path == layout.split_path("random")
    df = pd.read_parquet(path)
    assert _folds(df) == ["split_0"]
    train = df[df["original_split"] == "train"]
    share = (train["split_0"] == "val").mean()
    assert 0.05 < share < 0.15
    assert not set(train.loc[train["split_0"] == "val", "aoi_id"]) & set(
        train.loc[train["split_0"] == "train", "aoi_id"]
    )
    assert set(df.loc[df["original_split"] == "test", "split_0"]) == {"test"}
    with pytest.raises(KelpsegError, match="train_size must be between 0 and 1"):
        make_random_split(layout, train_size=1.0)


def test_refuses_without_eda(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    with pytest.raises(
        StageNotRunError, match=r"dataset_stats\.parquet not found: run `kelpseg eda` \(make eda\)"
    ):
        make_cv_split(layout)
    with pytest.raises(StageNotRunError, match=r"run `kelpseg eda` \(make eda\) first"):
        make_random_split(layout)


def test_refuses_bad_fold_counts(tmp_path: Path) -> None:
    small = eda_table(n_groups=4, n_test=2)
    n_groups = small.loc[
        (small["split"] == "train") & ~small["tile_id"].isin(HIGH_KELP_IDS), "aoi_id"
    ].nunique()
    layout = write_eda(tmp_path, small)
    with pytest.raises(KelpsegError, match=rf"n_splits=10 is more than the {n_groups} AOI groups"):
        make_cv_split(layout, n_splits=10)
    with pytest.raises(KelpsegError, match="n_splits must be at least 2, got 1"):
        make_cv_split(layout, n_splits=1)


def test_refuses_without_train_tiles(tmp_path: Path) -> None:
    df = eda_table(n_groups=3)
    layout = write_eda(tmp_path, df[df["split"] == "test"])
    with pytest.raises(KelpsegError, match="no training tiles to split"):
        make_cv_split(layout)
