"""Train / validation split: group-aware stratified K-fold over AOIs, or one random hold-out.

Input: the EDA table (``processed/eda/dataset_stats.parquet``, which carries ``aoi_id``).
Output: ``processed/train_val_test_dataset_strategy={cross_val|random}.parquet`` with every EDA
column (``split`` renamed ``original_split``), plus ``kelp_pct_bin``, ``stratification`` and
``split_0 … split_{K-1}`` holding ``train`` / ``val`` / ``test`` (test tiles are ``test`` in every
column). Training reads fold k from ``split_k``.

Steps

1. Mislabelled training tiles (more than 40% kelp, ``high_kelp_pixels_pct``) are dropped; their
   ids are logged.
2. Stratification key per tile: the values of the stratification columns joined as
   ``has_kelp=True-kelp_pct_bin=(0,1%]-qa_ok=True-...``. ``kelp_pct_bin`` bins the kelp share:
   ``0`` (no kelp), ``(0,1%]``, ``(1%,5%]``, ``>5%`` (train tiles' median kelp share is about 0.1%,
   the 75th percentile about 0.7%, so the bins separate none / little / some / much kelp).
3. Cross-validation: scikit-learn ``StratifiedGroupKFold(n_splits, shuffle=True,
   random_state=seed)`` over the *tiles*, with the AOI as group. A group never spans train and
   val of a fold, and each fold's val set follows the key distribution of all tiles as closely
   as the groups allow. The reference instead gave each AOI the most frequent key of its tiles
   and stratified the AOIs: that ignores AOI sizes (a fold can get many more tiles than
   another) and the minority keys inside large AOIs. Tiles the AOI grouping could not place
   (no usable terrain, no link; see :mod:`kelpseg.prep.aoi`) share one pooled ``aoi_id``, so
   they are one group here too: all of them go to the same validation fold, and several dates
   of one unrecognisable place can never be on both sides of a fold.
4. Random hold-out (``make_random_split``): the same splitter with ``n`` folds, taking ``m`` of
   them as val, where ``n = max(20, round(1 / val_share))`` (at most the number of groups) and
   ``m = round(n * val_share)``; the val share is thus rounded to a multiple of ``1/n``. Unlike
   the reference's ``train_test_split`` it is grouped, so near-duplicates cannot leak.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from kelpseg.errors import KelpsegError, StageNotRunError, run_hint
from kelpseg.io.atomic import require_complete, write_parquet
from kelpseg.layout import DataLayout

log = logging.getLogger(__name__)

DEFAULT_STRATIFICATION_COLUMNS: tuple[str, ...] = (
    "has_kelp",
    "kelp_pct_bin",
    "qa_ok",
    "almost_all_water",
    "high_corrupted_pixels_pct",
)
#: Upper edges of the kelp-share bins (fractions) and their labels; ``0`` is its own bin.
KELP_PCT_BIN_EDGES: tuple[float, ...] = (0.01, 0.05)
KELP_PCT_BIN_LABELS: tuple[str, ...] = ("0", "(0,1%]", "(1%,5%]", ">5%")


def kelp_pct_bin(kelp_pct: pd.Series) -> pd.Series:
    """Bin kelp shares into :data:`KELP_PCT_BIN_LABELS`; missing (test tiles) stays missing."""
    values = kelp_pct.to_numpy(dtype=float)
    codes = np.where(values <= 0, 0, 1 + np.searchsorted(KELP_PCT_BIN_EDGES, values, side="left"))
    labels = np.asarray(KELP_PCT_BIN_LABELS, dtype=object)[np.clip(codes, 0, len(KELP_PCT_BIN_LABELS) - 1)]
    labels[np.isnan(values)] = None
    return pd.Series(labels, index=kelp_pct.index, dtype=object)


def load_eda_stats(layout: DataLayout) -> pd.DataFrame:
    path = layout.eda_stats
    if not path.exists():
        raise StageNotRunError.missing(path, "eda", "eda")
    require_complete(layout.eda_dir, "EDA outputs")
    df = pd.read_parquet(path)
    needed = {"tile_id", "aoi_id", "split", "kelp_pixels_pct", "high_kelp_pixels_pct"}
    missing = sorted(needed - set(df.columns))
    if missing:
        raise KelpsegError(
            f"{path}: not an EDA stats table (missing {missing}): run {run_hint('eda', 'eda')} again"
        )
    return df


def _key_value(value: object) -> str:
    return (
        "None"
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))
        else str(value)
    )


def stratification_key(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """``col=value`` pairs joined by ``-``, one string per row."""
    unknown = [c for c in columns if c not in df.columns]
    if unknown:
        raise KelpsegError(
            f"unknown stratification column(s) {unknown}; choose from "
            f"{sorted(c for c in df.columns if c not in ('tile_id', 'aoi_id'))}"
        )
    if not columns:
        return pd.Series("all", index=df.index, dtype=object)
    parts = [c + "=" + df[c].astype(object).map(_key_value) for c in columns]
    key = parts[0]
    for part in parts[1:]:
        key = key + "-" + part
    return key


def _prepare(layout: DataLayout, columns: Sequence[str]) -> pd.DataFrame:
    """EDA table with ``original_split``, high-kelp train tiles dropped, key and bin added."""
    df = load_eda_stats(layout).rename(columns={"split": "original_split"})
    is_train = df["original_split"] == "train"
    if not is_train.any():
        raise KelpsegError(f"{layout.eda_stats}: no training tiles to split")
    if df.loc[is_train, "aoi_id"].isna().any():
        raise KelpsegError(
            f"{layout.eda_stats}: training tiles without aoi_id: "
            f"run {run_hint('aoi-grouping', 'aoi-grouping')} again"
        )
    high = is_train & df["high_kelp_pixels_pct"].astype("boolean").fillna(False).astype(bool)
    if high.any():
        dropped = df.loc[high, "tile_id"].tolist()
        log.warning("dropped %d mislabelled tile(s) with > 40%% kelp: %s", len(dropped), ", ".join(dropped))
        df = df[~high].reset_index(drop=True)
        if not (df["original_split"] == "train").any():
            raise KelpsegError(f"{layout.eda_stats}: no training tiles left after dropping high-kelp tiles")
    df["kelp_pct_bin"] = kelp_pct_bin(df["kelp_pixels_pct"])
    df["stratification"] = stratification_key(df, list(columns))
    return df


def _fold_of_tiles(keys: pd.Series, groups: pd.Series, n_splits: int, seed: int) -> np.ndarray:
    """Val fold (0..n_splits-1) of every tile from StratifiedGroupKFold."""
    n_groups = groups.nunique()
    if n_splits < 2:
        raise KelpsegError(f"n_splits must be at least 2, got {n_splits}")
    if n_splits > n_groups:
        raise KelpsegError(
            f"n_splits={n_splits} is more than the {n_groups} AOI groups of the training tiles; "
            f"use at most {n_groups} splits"
        )
    y = pd.factorize(keys, sort=True)[0]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.full(len(keys), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # rare keys with fewer tiles than folds are expected; they cannot be spread evenly
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(y)), y, groups.to_numpy())):
            fold[val_idx] = k
    return fold


def _split_columns(
    df: pd.DataFrame, val_fold: np.ndarray, val_folds_per_split: list[set[int]]
) -> pd.DataFrame:
    is_train = (df["original_split"] == "train").to_numpy()
    out = df.copy()
    for k, val_set in enumerate(val_folds_per_split):
        col = np.where(np.isin(val_fold, list(val_set)), "val", "train")
        out[f"split_{k}"] = np.where(is_train, col, "test")
    return out


def _val_fold_array(df: pd.DataFrame, n_splits: int, seed: int) -> np.ndarray:
    is_train = (df["original_split"] == "train").to_numpy()
    train = df[is_train]
    fold = np.full(len(df), -1, dtype=np.int64)
    fold[is_train] = _fold_of_tiles(train["stratification"], train["aoi_id"], n_splits, seed)
    return fold


def make_cv_split(
    layout: DataLayout,
    n_splits: int = 10,
    seed: int = 42,
    stratification_columns: Sequence[str] = DEFAULT_STRATIFICATION_COLUMNS,
) -> Path:
    """Write the K-fold cross-validation split parquet and return its path."""
    df = _prepare(layout, stratification_columns)
    fold = _val_fold_array(df, n_splits, seed)
    out = _split_columns(df, fold, [{k} for k in range(n_splits)])
    return write_parquet(layout.split_path("cross_val"), out)


def make_random_split(
    layout: DataLayout,
    train_size: float = 0.95,
    seed: int = 42,
    stratification_columns: Sequence[str] = DEFAULT_STRATIFICATION_COLUMNS,
) -> Path:
    """Write a single grouped, stratified train/val hold-out (column ``split_0``); return its path."""
    if not 0 < train_size < 1:
        raise KelpsegError(f"train_size must be between 0 and 1 (exclusive), got {train_size}")
    df = _prepare(layout, stratification_columns)
    n_groups = df.loc[df["original_split"] == "train", "aoi_id"].nunique()
    if n_groups < 2:
        raise KelpsegError(f"a train/val split needs at least 2 AOI groups of training tiles, got {n_groups}")
    val_share = 1.0 - train_size
    n = min(n_groups, max(20, round(1.0 / val_share)))
    m = min(n - 1, max(1, round(n * val_share)))
    fold = _val_fold_array(df, n, seed)
    out = _split_columns(df, fold, [set(range(m))])
    log.info("random split: %d of %d folds as val (val share %.3f asked %.3f)", m, n, m / n, val_share)
    return write_parquet(layout.split_path("random"), out)
