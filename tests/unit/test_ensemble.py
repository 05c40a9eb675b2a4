"""Weighted ensembles of prediction folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kelpseg.errors import KelpsegError
from kelpseg.infer.ensemble import ensemble_folders, reference_equivalent_threshold, weights_from_scores
from kelpseg.io.tiles import read_mask, write_geotiff, write_mask, write_probability

S = 350


def _prob(values: list[float]) -> np.ndarray:
    """A tile whose first len(values) pixels of row 0 hold ``values`` (rest 0)."""
    p = np.zeros((S, S), np.float32)
    p[0, : len(values)] = values
    return p


def _write_probs(folder: Path, tiles: dict[str, np.ndarray]) -> Path:
    for tid, arr in tiles.items():
        write_probability(folder / f"{tid}_kelp.tif", arr)
    return folder


def test_weighted_soft_average(tmp_path: Path) -> None:
    a = _write_probs(tmp_path / "a", {"T1": _prob([0.9, 0.2, 0.5, 0.0]), "T2": _prob([0.1])})
    b = _write_probs(tmp_path / "b", {"T1": _prob([0.1, 0.6, 0.5, 0.55]), "T2": _prob([0.7])})
    res = ensemble_folders(
        [a, b], tmp_path / "out", weights=[0.2, 0.8], threshold=0.5, write_probabilities=True, progress=False
    )
    # T1 means: 0.2*0.9+0.8*0.1=0.26, 0.04+0.48=0.52, 0.5, 0.44 ; T2: 0.02+0.56=0.58
    mean = read_prob(tmp_path / "out" / "probabilities" / "T1_kelp.tif")
    assert np.allclose(mean[0, :4], [0.26, 0.52, 0.5, 0.44], atol=1e-6)
    assert read_mask(tmp_path / "out" / "T1_kelp.tif")[0, :5].tolist() == [0, 1, 1, 0, 0]
    assert read_mask(tmp_path / "out" / "T2_kelp.tif")[0, 0] == 1
    assert read_mask(tmp_path / "out" / "T2_kelp.tif").sum() == 1
    assert res.n_tiles == 2 and res.weights == [0.2, 0.8]
    cfg = json.loads((tmp_path / "out" / "ensemble_config.json").read_text())
    assert cfg["mode"] == "soft" and cfg["weights"] == [0.2, 0.8] and cfg["n_tiles"] == 2
    # divisor is the weight sum actually used: scaling all weights changes nothing
    ensemble_folders([a, b], tmp_path / "out2", weights=[2, 8], write_probabilities=True, progress=False)
    assert np.allclose(read_prob(tmp_path / "out2" / "probabilities" / "T1_kelp.tif"), mean, atol=1e-6)


def read_prob(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        assert src.dtypes[0] == "float32"
        return src.read(1)


def test_hard_labels_and_vote_mode(tmp_path: Path) -> None:
    dirs = []
    # three members' votes at pixel k (row 0): member i says kelp where votes[i][k] == 1
    votes = [[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]]
    for i, v in enumerate(votes):
        m = np.zeros((S, S), np.uint8)
        m[0, :4] = v
        write_mask(tmp_path / f"m{i}" / "T1_kelp.tif", m)
        dirs.append(tmp_path / f"m{i}")
    # equal weights: shares 2/3, 1/3, 2/3, 1/3
    ensemble_folders(dirs, tmp_path / "v", mode="vote", threshold=0.5, progress=False)
    assert read_mask(tmp_path / "v" / "T1_kelp.tif")[0, :4].tolist() == [1, 0, 1, 0]
    # weights 1, 1, 2: shares 0.5, 0.25, 0.75, 0.5 -> at 0.5 ties count as kelp
    ensemble_folders(dirs, tmp_path / "w", weights=[1, 1, 2], mode="vote", threshold=0.5, progress=False)
    assert read_mask(tmp_path / "w" / "T1_kelp.tif")[0, :4].tolist() == [1, 0, 1, 1]
    # soft mode on hard labels with a stricter threshold: 0.75 only
    ensemble_folders(dirs, tmp_path / "s", weights=[1, 1, 2], threshold=0.6, progress=False)
    assert read_mask(tmp_path / "s" / "T1_kelp.tif")[0, :4].tolist() == [0, 0, 1, 0]


def test_vote_mode_cuts_probabilities_at_member_threshold(tmp_path: Path) -> None:
    a = _write_probs(tmp_path / "a", {"T": _prob([0.45, 0.45])})
    b = _write_probs(tmp_path / "b", {"T": _prob([0.45, 0.9])})
    ensemble_folders([a, b], tmp_path / "o", mode="vote", threshold=1.0, progress=False)
    assert read_mask(tmp_path / "o" / "T_kelp.tif")[0, :2].tolist() == [0, 0]
    ensemble_folders(
        [a, b], tmp_path / "o", mode="vote", threshold=1.0, member_threshold=0.45, progress=False
    )
    assert read_mask(tmp_path / "o" / "T_kelp.tif")[0, :2].tolist() == [1, 1]


def test_zero_weight_member_is_skipped(tmp_path: Path) -> None:
    a = _write_probs(tmp_path / "a", {"T": _prob([0.9])})
    b = _write_probs(tmp_path / "b", {"T": _prob([0.1]), "EXTRA": _prob([0.1])})  # mismatched, but skipped
    res = ensemble_folders(
        [a, b], tmp_path / "o", weights=[1.0, 0.0], write_probabilities=True, progress=False
    )
    assert res.members == [a] and res.skipped == [b]
    assert read_prob(tmp_path / "o" / "probabilities" / "T_kelp.tif")[0, 0] == pytest.approx(0.9)
    assert not (tmp_path / "o" / "EXTRA_kelp.tif").exists()


def test_mismatched_members_are_refused(tmp_path: Path) -> None:
    a = _write_probs(tmp_path / "a", {"T1": _prob([0.1]), "T2": _prob([0.1])})
    b = _write_probs(tmp_path / "b", {"T1": _prob([0.1]), "T3": _prob([0.1])})
    with pytest.raises(KelpsegError, match=r"a: lacks 1 \(T3\); .*b: lacks 1 \(T2\)"):
        ensemble_folders([a, b], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    a = _write_probs(tmp_path / "a", {"T": _prob([0.1])})
    b = _write_probs(tmp_path / "b", {"T": _prob([0.1])})
    with pytest.raises(KelpsegError, match="2 weights for 1"):
        ensemble_folders([a], tmp_path / "o", weights=[1, 2], progress=False)
    with pytest.raises(KelpsegError, match="at least one ensemble weight must be positive"):
        ensemble_folders([a, b], tmp_path / "o", weights=[0, 0], progress=False)
    with pytest.raises(KelpsegError, match=">= 0"):
        ensemble_folders([a, b], tmp_path / "o", weights=[1, -1], progress=False)
    with pytest.raises(KelpsegError, match="unknown ensemble mode"):
        ensemble_folders([a, b], tmp_path / "o", mode="median", progress=False)
    with pytest.raises(KelpsegError, match="must differ"):
        ensemble_folders([a, b], a, progress=False)
    write_geotiff(tmp_path / "c" / "T_kelp.tif", np.zeros((10, 10), np.float32), "float32")
    with pytest.raises(KelpsegError, match="shape"):
        ensemble_folders([a, tmp_path / "c"], tmp_path / "o", progress=False)


def test_weights_from_scores() -> None:
    assert weights_from_scores([0.70, 0.72, 0.71]) == pytest.approx([0.2, 1.0, 0.6])
    assert weights_from_scores([0.5, 0.6], low=0.0, high=2.0) == pytest.approx([0.0, 2.0])
    assert weights_from_scores([0.7, 0.7]) == [1.0, 1.0]
    with pytest.raises(KelpsegError, match="finite"):
        weights_from_scores([0.7, float("nan")])


def test_reference_equivalent_threshold() -> None:
    # 10 equal folds at 0.48: the reference needed votes/11 >= 0.48, i.e. 6 of 10
    t = reference_equivalent_threshold(0.48, [1.0] * 10)
    assert t == pytest.approx(0.528)
    assert 5 / 10 < t <= 6 / 10
    assert reference_equivalent_threshold(0.5, [0.0, 2.0, 2.0]) == pytest.approx(0.75)


def _fitted_run(root: Path, name: str, rows: list[tuple[float, int, int, int]], dice: float) -> Path:
    """A run dir whose threshold.json holds ``(threshold, tp, fp, fn)`` rows (tn = 100)."""
    import pandas as pd

    from kelpseg.evaluate.threshold import best_threshold

    run = root / name
    run.mkdir(parents=True)
    table = pd.DataFrame(rows, columns=["threshold", "tp", "fp", "fn"]).assign(tn=100)
    best = best_threshold(table)
    payload = {"threshold": best.threshold, "dice": dice, "grid": best.table.to_dict(orient="records")}
    (run / "threshold.json").write_text(json.dumps(payload))
    return run


def test_ensemble_threshold_from_pooled_out_of_fold_counts(tmp_path: Path) -> None:
    from kelpseg.infer.workflows import pooled_threshold, resolve_ensemble

    # run a: Dice 16/22, 12/17, 6/13 -> best 0.3; run b: 10/25, 10/17, 8/9 -> best 0.7
    a = _fitted_run(tmp_path, "a", [(0.3, 8, 4, 2), (0.5, 6, 1, 4), (0.7, 3, 0, 7)], 0.7)
    b = _fitted_run(tmp_path, "b", [(0.3, 5, 10, 0), (0.5, 5, 2, 0), (0.7, 4, 0, 1)], 0.9)
    assert json.loads((a / "threshold.json").read_text())["threshold"] == 0.3
    assert json.loads((b / "threshold.json").read_text())["threshold"] == 0.7
    # pooled: 0.3 -> 26/42, 0.5 -> 22/29, 0.7 -> 14/29
    threshold, dice = pooled_threshold([a, b])
    assert threshold == 0.5 and dice == pytest.approx(22 / 29)
    w, t, source = resolve_ensemble([a, b], [1.0, 3.0], None)
    assert (w, t) == ([1.0, 3.0], 0.5) and source.startswith("pooled out-of-fold")
    assert resolve_ensemble([a, b], [1.0, 3.0], 0.42)[1:] == (0.42, "given")
    # a run whose threshold.json has no grid: the weighted mean of the fitted thresholds
    (b / "threshold.json").write_text(json.dumps({"threshold": 0.7, "dice": 0.9}))
    assert pooled_threshold([a, b]) is None
    w, t, source = resolve_ensemble([a, b], [1.0, 3.0], None)
    assert t == pytest.approx(0.6) and source == "weighted mean of the runs' fitted thresholds"
    # different grids cannot be pooled either
    c = _fitted_run(tmp_path, "c", [(0.4, 5, 2, 0), (0.6, 4, 0, 1)], 0.8)
    assert pooled_threshold([a, c]) is None
    # a run never evaluated: 0.5, saying so
    (tmp_path / "d").mkdir()
    assert resolve_ensemble([a, tmp_path / "d"], None, None)[1] == 0.5
