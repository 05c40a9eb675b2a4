"""Prediction preview PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kelpseg.errors import KelpsegError
from kelpseg.infer.previews import most_predicted_kelp, write_prediction_previews
from kelpseg.io.tiles import write_geotiff, write_mask, write_probability

S = 350


def _tile(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tile = rng.integers(5000, 12000, size=(7, S, S)).astype(np.int16)
    tile[6, :20] = -32768
    return tile


def test_previews_written_for_labels_and_probabilities(tmp_path: Path) -> None:
    for i, tid in enumerate(["B2", "A1", "C3"]):
        write_geotiff(tmp_path / "img" / f"{tid}_satellite.tif", _tile(i), "int16")
        m = np.zeros((S, S), np.uint8)
        m[50:80, 50:90] = 1
        write_mask(tmp_path / "gt" / f"{tid}_kelp.tif", m)
        if tid == "C3":
            write_probability(tmp_path / "pred" / f"{tid}_kelp.tif", m.astype(np.float32) * 0.8)
        else:
            write_mask(tmp_path / "pred" / f"{tid}_kelp.tif", m)
    paths = write_prediction_previews(
        tmp_path / "img", tmp_path / "pred", tmp_path / "out", n=2, progress=False
    )
    assert [p.name for p in paths] == ["A1_preview.png", "B2_preview.png"]
    paths = write_prediction_previews(
        tmp_path / "img",
        tmp_path / "pred",
        tmp_path / "out",
        tile_ids=["C3"],
        gt_dir=tmp_path / "gt",
        progress=False,
    )
    with Image.open(paths[0]) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100
    with pytest.raises(KelpsegError, match=r"no prediction for tile\(s\) ZZ"):
        write_prediction_previews(tmp_path / "img", tmp_path / "pred", tmp_path / "out", tile_ids=["ZZ"])
    write_mask(tmp_path / "pred" / "D4_kelp.tif", np.zeros((S, S), np.uint8))
    with pytest.raises(KelpsegError, match=r"no image for tile\(s\) D4"):
        write_prediction_previews(tmp_path / "img", tmp_path / "pred", tmp_path / "out", tile_ids=["D4"])


def test_default_previews_are_the_tiles_with_most_predicted_kelp(tmp_path: Path) -> None:
    sizes = {"A1": 5, "B2": 40, "C3": 0, "D4": 20}
    for i, (tid, k) in enumerate(sizes.items()):
        write_geotiff(tmp_path / "img" / f"{tid}_satellite.tif", _tile(i), "int16")
        m = np.zeros((S, S), np.uint8)
        m[:k, :k] = 1
        write_mask(tmp_path / "pred" / f"{tid}_kelp.tif", m)
    paths = write_prediction_previews(
        tmp_path / "img", tmp_path / "pred", tmp_path / "out", n=2, progress=False
    )
    assert [p.name for p in paths] == ["B2_preview.png", "D4_preview.png"]
    preds = {t: tmp_path / "pred" / f"{t}_kelp.tif" for t in sizes}
    assert most_predicted_kelp(preds, 3) == ["B2", "D4", "A1"]
    assert most_predicted_kelp(preds, 0) == []
