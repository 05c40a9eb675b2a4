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
