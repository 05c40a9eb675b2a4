"""Folder evaluation: pairing by tile id, the global kelp Dice, per-tile statistics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from kelpseg.errors import KelpsegError, TileError
from kelpseg.evaluate.evaluate import binarize, evaluate_folders, read_prediction, write_report
from kelpseg.io.tiles import write_geotiff, write_mask, write_probability

S = 350


def _mask(rows: slice = slice(0, 0), cols: slice = slice(0, 0)) -> np.ndarray:
    m = np.zeros((S, S), np.uint8)
    m[rows, cols] = 1
    return m


def _write(folder: Path, tid: str, arr: np.ndarray) -> Path:
    path = folder / f"{tid}_kelp.tif"
    if arr.dtype == np.float32:
        return write_probability(path, arr)
    return write_mask(path, arr)


def test_both_empty_is_dice_one(tmp_path: Path) -> None:
    _write(tmp_path / "gt", "AA", _mask())
    _write(tmp_path / "pred", "AA", _mask())
    report = evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False)
    assert report.dice == 1.0
    assert report.per_tile_summary["n_both_empty"] == 1
    assert report.per_tile_summary["n_scored"] == 0
    assert report.per_tile_summary["mean"] is None


def test_empty_prediction_with_kelp_truth_is_zero(tmp_path: Path) -> None:
    _write(tmp_path / "gt", "AA", _mask(slice(0, 10), slice(0, 10)))
    _write(tmp_path / "pred", "AA", _mask())
    report = evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False)
    assert report.dice == 0.0
    assert report.counts.fn == 100 and report.counts.tp == 0
    assert report.per_tile_summary["n_missed_tiles"] == 1


def test_global_dice_differs_from_mean_of_tiles(tmp_path: Path) -> None:
    # tile A: truth 100 px, prediction covers them exactly -> dice 1
    _write(tmp_path / "gt", "A", _mask(slice(0, 10), slice(0, 10)))
    _write(tmp_path / "pred", "A", _mask(slice(0, 10), slice(0, 10)))
    # tile B: truth 300 px (rows 0..29, cols 0..9), prediction 100 px inside -> tp 100, fn 200
    _write(tmp_path / "gt", "B", _mask(slice(0, 30), slice(0, 10)))
    _write(tmp_path / "pred", "B", _mask(slice(0, 10), slice(0, 10)))
    # tile C: empty both sides (not part of the per-tile mean)
    _write(tmp_path / "gt", "C", _mask())
    _write(tmp_path / "pred", "C", _mask())
    report = evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False, workers=2)
    # global: tp = 200, fp = 0, fn = 200 -> 400 / 600
    assert report.dice == pytest.approx(2 / 3)
    # per tile: A = 1, B = 200 / 400 = 0.5 -> mean 0.75 (C excluded)
    assert report.per_tile_summary["mean"] == pytest.approx(0.75)
    assert report.per_tile_summary["median"] == pytest.approx(0.75)
    assert report.per_tile_summary["n_scored"] == 2
    assert report.per_tile_summary["n_both_empty"] == 1
    assert report.scores["precision"] == 1.0
    assert report.scores["recall"] == pytest.approx(0.5)
    assert report.scores["iou"] == pytest.approx(0.5)
    assert report.n_tiles == 3
    tiles = report.per_tile.set_index("tile_id")
    assert np.isnan(tiles.loc["C", "dice"])
    assert tiles.loc["B", "fn"] == 200


def test_pairs_by_tile_id_not_sort_order(tmp_path: Path) -> None:
    # Ids whose order differs between the folders if names were sorted with different suffixes;
    # we also write the files in a shuffled order. Each prediction matches only its own truth.
    ids = ["ZZ9", "AB1", "MM5", "CD2"]
    rng = np.random.default_rng(0)
    for i, tid in enumerate(ids):
        _write(tmp_path / "gt", tid, _mask(slice(i * 20, i * 20 + 10), slice(0, 50)))
    for i in rng.permutation(len(ids)):
        _write(tmp_path / "pred", ids[i], _mask(slice(i * 20, i * 20 + 10), slice(0, 50)))
    report = evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False)
    assert report.dice == 1.0
    assert (report.per_tile["dice"] == 1.0).all()


def test_probabilities_are_thresholded(tmp_path: Path) -> None:
    gt = _mask(slice(0, 10), slice(0, 10))
    prob = np.zeros((S, S), np.float32)
    prob[0:10, 0:10] = 0.45  # kelp, below 0.5
    prob[20:30, 0:10] = 0.45  # background, below 0.5
    _write(tmp_path / "gt", "T1", gt)
    _write(tmp_path / "pred", "T1", prob)
    assert evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False).dice == 0.0
    at_045 = evaluate_folders(tmp_path / "gt", tmp_path / "pred", threshold=0.45, progress=False)
    assert at_045.dice == pytest.approx(200 / 300)  # tp 100, fp 100
    assert at_045.counts.fp == 100


def test_binarize_cuts_in_float64() -> None:
    p = np.array([0.45, 0.4499999], np.float32)
    # both sides in float32: a stored 0.45 is kelp at 0.45; 0.4499999 is not
    assert binarize(p, 0.45).tolist() == [True, False]


def test_mismatched_sets_are_refused(tmp_path: Path) -> None:
    for tid in ["A1", "A2", "A3"]:
        _write(tmp_path / "gt", tid, _mask())
    for tid in ["A1", "A2", "B9"]:
        _write(tmp_path / "pred", tid, _mask())
    with pytest.raises(KelpsegError, match=r"1 missing \(A3\); 1 extra \(B9\)"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False)


def test_many_missing_ids_are_truncated(tmp_path: Path) -> None:
    for i in range(15):
        _write(tmp_path / "gt", f"T{i:02d}", _mask())
    (tmp_path / "pred").mkdir()
    with pytest.raises(KelpsegError, match=r"15 missing \(T00, .*T09, … \(15 in all\)\)"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False)


def test_bad_prediction_values_name_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "gt", "A1", _mask())
    bad = _mask()
    bad[0, 0] = 2
    path = write_geotiff(tmp_path / "pred" / "A1_kelp.tif", bad, "uint8")
    with pytest.raises(TileError, match=rf"{path.name}: expected 0/1 labels, got values \[0, 2\]"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False)
    two_bands = write_geotiff(tmp_path / "x_kelp.tif", np.zeros((2, S, S), np.uint8), "uint8")
    with pytest.raises(TileError, match="expected a one-band prediction, got 2 bands"):
        read_prediction(two_bands)
    over = write_probability(tmp_path / "y_kelp.tif", np.full((S, S), 1.5, np.float32))
    with pytest.raises(TileError, match=r"expected probabilities in \[0, 1\]"):
        read_prediction(over)


def test_int8_predictions_are_read_as_labels(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "a_kelp.tif", _mask(slice(0, 2), slice(0, 2)).astype(np.int8), "int8")
    pred = read_prediction(path)
    assert pred.dtype == np.uint8 and pred.sum() == 4


def test_write_report_json_and_tiles(tmp_path: Path) -> None:
    _write(tmp_path / "gt", "A", _mask(slice(0, 10), slice(0, 10)))
    _write(tmp_path / "pred", "A", _mask(slice(0, 5), slice(0, 10)))
    report = evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False)
    out = write_report(report, tmp_path / "out" / "report.json", tmp_path / "out" / "tiles.csv")
    data = json.loads(out.read_text())
    assert data["dice"] == pytest.approx(100 / 150)
    assert data["counts"] == {"tp": 50, "fp": 0, "fn": 50, "tn": S * S - 100}
    assert data["n_tiles"] == 1 and data["threshold"] == 0.5
    assert data["worst_tiles"][0]["tile_id"] == "A"
    assert (tmp_path / "out" / "tiles.csv").read_text().splitlines()[0].startswith("tile_id,tp,fp,fn,tn")
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".")]
