"""Prediction from a run (with a stand-in run whose model reads the NIR band), and evaluate_run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from torch import nn

from kelpseg.errors import KelpsegError, TileError
from kelpseg.evaluate.threshold import search_threshold
from kelpseg.infer import predict
from kelpseg.infer.predict import InferenceOptions, iter_probabilities, predict_folder, resolve_threshold
from kelpseg.io.tiles import read_mask, write_geotiff, write_mask
from kelpseg.layout import DataLayout

S = 350
NIR, DEM = 1, 6


class NirTransform(nn.Module):
    """Raw (N, 7, 350, 350) -> NIR scaled to about [-1, 1], NaN -> 0, padded to 352."""

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = (raw[:, NIR : NIR + 1] - 8000.0) / 1000.0
        return nn.functional.pad(torch.nan_to_num(x, nan=0.0), (1, 1, 1, 1))

    def unpad(self, pred: torch.Tensor) -> torch.Tensor:
        return pred[..., 1:-1, 1:-1]


class PointwiseModel(nn.Module):
    """Logit = 2 * input channel: pointwise, so every TTA transform gives the same answer."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


@dataclass
class FakeRun:
    config: Any
    model: nn.Module
    transform: NirTransform
    unpad: Any
    band_stats: dict
    run_dir: Path
    checkpoint: Path


def fake_run(run_dir: Path, data_dir: Path | None = None, decision_threshold: float = 0.5) -> FakeRun:
    transform = NirTransform()
    config = SimpleNamespace(
        decision_threshold=decision_threshold, data_dir=str(data_dir), fold=0, split_path=None
    )
    return FakeRun(config, PointwiseModel(), transform, transform.unpad, {}, run_dir, run_dir / "best.ckpt")


def expected_prob(nir: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-2 * (nir.astype(np.float64) - 8000) / 1000))


def make_tile(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tile = rng.integers(5000, 12000, size=(7, S, S)).astype(np.int16)
    tile[NIR] = rng.integers(6000, 10000, size=(S, S))
    tile[DEM] = 0
    tile[DEM, :10] = 25  # land strip
    tile[DEM, 10:20] = -32768  # nodata
    return tile


TRANSFORM = Affine(0.0003, 0.0, -120.0, 0.0, -0.0003, 35.0)


def write_tiles(folder: Path, ids: list[str]) -> dict[str, np.ndarray]:
    tiles = {}
    for i, tid in enumerate(ids):
        tiles[tid] = make_tile(i)
        write_geotiff(
            folder / f"{tid}_satellite.tif", tiles[tid], "int16", crs="EPSG:32611", transform=TRANSFORM
        )
    return tiles


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setattr(predict, "load_inference_run", lambda d, c: fake_run(Path(d), tmp_path / "data"))
    return run_dir


def test_soft_predictions_match_the_model(tmp_path: Path, patched: Path) -> None:
    tiles = write_tiles(tmp_path / "img", ["T2", "T1", "T3"])
    (patched / "threshold.json").write_text("{")  # not needed for probabilities, so not read
    res = predict_folder(
        patched,
        tmp_path / "img",
        tmp_path / "out",
        soft=True,
        options=InferenceOptions(batch_size=2, num_workers=0, progress=False),
    )
    assert res.tile_ids == ["T1", "T2", "T3"] and res.soft and res.threshold is None
    for tid, tile in tiles.items():
        with rasterio.open(tmp_path / "out" / f"{tid}_kelp.tif") as src:
            assert (src.count, src.height, src.width, src.dtypes[0]) == (1, S, S, "float32")
            assert src.crs.to_epsg() == 32611 and src.transform == TRANSFORM
            prob = src.read(1)
        assert np.allclose(prob, expected_prob(tile[NIR]), atol=1e-5)
    cfg = json.loads((tmp_path / "out" / "predict_config.json").read_text())
    assert cfg["n_tiles"] == 3 and cfg["soft"] is True and cfg["tta"] is False and cfg["threshold"] is None
    with pytest.raises(KelpsegError, match=r"threshold\.json: unreadable threshold file"):
        predict_folder(
            patched,
            tmp_path / "img",
            tmp_path / "hard",
            options=InferenceOptions(num_workers=0, progress=False),
        )


def test_hard_masks_threshold_and_land_mask(tmp_path: Path, patched: Path) -> None:
    tiles = write_tiles(tmp_path / "img", ["A1", "B2"])
    res = predict_folder(
        patched,
        tmp_path / "img",
        tmp_path / "out",
        threshold=0.6,
        options=InferenceOptions(land_mask=True, num_workers=2, progress=False),
    )
    assert res.threshold == 0.6 and res.threshold_source == "argument"
    for tid, tile in tiles.items():
        mask = read_mask(tmp_path / "out" / f"{tid}_kelp.tif")
        expected = (expected_prob(tile[NIR]) >= 0.6) & ~(tile[DEM] > 0)
        assert np.array_equal(mask.astype(bool), expected)
        assert mask[:10].sum() == 0  # land
        assert mask[10:20].sum() > 0  # DEM nodata is left alone


def test_threshold_resolution(tmp_path: Path) -> None:
    config = SimpleNamespace(decision_threshold=0.45)
    assert resolve_threshold(tmp_path, config, None) == (0.45, "config.decision_threshold")
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 0.41, "dice": 0.7}))
    value, source = resolve_threshold(tmp_path, config, None)
    assert value == 0.41 and source.endswith("threshold.json")
    assert resolve_threshold(tmp_path, config, 0.3) == (0.3, "argument")
    with pytest.raises(KelpsegError, match=r"must lie in \[0, 1\]"):
        resolve_threshold(tmp_path, config, 1.3)


def test_threshold_json_is_used_by_default(tmp_path: Path, patched: Path) -> None:
    tiles = write_tiles(tmp_path / "img", ["A1"])
    (patched / "threshold.json").write_text(json.dumps({"threshold": 0.3}))
    res = predict_folder(
        patched, tmp_path / "img", tmp_path / "out", options=InferenceOptions(num_workers=0, progress=False)
    )
    assert res.threshold == 0.3
    mask = read_mask(tmp_path / "out" / "A1_kelp.tif")
    assert np.array_equal(mask.astype(bool), expected_prob(tiles["A1"][NIR]) >= np.float32(0.3))


def test_tta_and_bf16_on_a_pointwise_model(tmp_path: Path) -> None:
    write_tiles(tmp_path / "img", ["A1", "B2", "C3"])
    paths = sorted((tmp_path / "img").glob("*.tif"))
    run = fake_run(tmp_path)

    def probs(**kw: Any) -> np.ndarray:
        opts = InferenceOptions(batch_size=2, num_workers=0, progress=False, **kw)
        return np.concatenate([p for _, p, _ in iter_probabilities(run, paths, opts)])

    plain = probs()
    assert np.allclose(probs(tta=True), plain, atol=1e-6)
    assert np.allclose(probs(tta=True, tta_merge="max", tta_transforms="flips"), plain, atol=1e-6)
    assert np.allclose(probs(bf16=True), plain, atol=2e-2)


def test_bad_inputs_name_the_file(tmp_path: Path, patched: Path) -> None:
    write_tiles(tmp_path / "img", ["A1"])
    bad = write_geotiff(tmp_path / "img" / "B2_satellite.tif", np.zeros((5, S, S), np.int16), "int16")
    with pytest.raises(
        TileError, match=rf"{bad.name}: expected a satellite tile of 7 band\(s\) x 350 x 350, got 5"
    ):
        predict_folder(patched, tmp_path / "img", tmp_path / "out", options=InferenceOptions(progress=False))
    small = write_geotiff(tmp_path / "x" / "C3_satellite.tif", np.zeros((7, 300, S), np.int16), "int16")
    with pytest.raises(TileError, match="got 7 x 300 x 350"):
        predict_folder(patched, [small], tmp_path / "out", options=InferenceOptions(progress=False))
    with pytest.raises(KelpsegError, match="input folder not found"):
        predict_folder(
            patched, tmp_path / "missing", tmp_path / "out", options=InferenceOptions(progress=False)
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(KelpsegError, match=r"no \*_satellite\.tif tiles found"):
        predict_folder(
            patched, tmp_path / "empty", tmp_path / "out", options=InferenceOptions(progress=False)
        )


def test_transform_in_workers_gives_the_same_probabilities(tmp_path: Path) -> None:
    write_tiles(tmp_path / "img", ["A1", "B2", "C3"])
    paths = sorted((tmp_path / "img").glob("*.tif"))
    run = fake_run(tmp_path)
    out = {}
    for in_workers in (True, False):
        opts = InferenceOptions(batch_size=2, num_workers=1, transform_in_workers=in_workers, progress=False)
        out[in_workers] = np.concatenate([p for _, p, _ in iter_probabilities(run, paths, opts)])
    assert out[True].shape == (3, S, S)
    np.testing.assert_array_equal(out[True], out[False])
    cpu = torch.device("cpu")
    assert predict.transforms_in_workers(InferenceOptions(num_workers=2), cpu)
    assert not predict.transforms_in_workers(InferenceOptions(num_workers=0), cpu)
    assert not predict.transforms_in_workers(InferenceOptions(num_workers=2), torch.device("cuda"))


def test_corrupt_tile_found_while_reading_is_one_line(tmp_path: Path) -> None:
    write_tiles(tmp_path / "img", ["A1"])
    path = tmp_path / "img" / "A1_satellite.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # header intact, pixels cut off
    opts = InferenceOptions(num_workers=1, progress=False)
    with pytest.raises(TileError) as info:
        list(iter_probabilities(fake_run(tmp_path), [path], opts))
    assert "A1_satellite.tif" in str(info.value) and "\n" not in str(info.value)


def test_evaluate_run_writes_threshold_json(tmp_path: Path, patched: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    ids = ["V1", "V2", "V3", "TR9"]
    tiles = write_tiles(layout.train_images, ids)
    truths = []
    for i, tid in enumerate(ids):
        # truth: NIR above 8300 (p >= 0.646), and some noise so the best threshold is not trivial
        truth = (tiles[tid][NIR] > 8300).astype(np.uint8)
        truth[100 + i : 120, :50] = 1
        write_mask(layout.mask_path(tid), truth)
        truths.append(truth)
    (patched / "split.json").write_text(json.dumps({"val_tile_ids": ids[:3], "train_tile_ids": ["TR9"]}))
    result = predict.evaluate_run(
        patched, layout=layout, options=InferenceOptions(batch_size=2, num_workers=0, progress=False)
    )
    probs = [expected_prob(tiles[t][NIR]).astype(np.float32) for t in ids[:3]]
    reference = search_threshold(probs, truths[:3])
    assert result.threshold == reference.threshold
    assert result.dice == pytest.approx(reference.dice, abs=1e-6)
    saved = json.loads((patched / "threshold.json").read_text())
    assert saved["threshold"] == result.threshold and saved["n_tiles"] == 3
    assert saved["dice_at_0.5"] == pytest.approx(reference.dice_at(0.5), abs=1e-4)
    assert len(saved["grid"]) == 91 and saved["tta"] is False
    assert saved["threshold_on_grid_edge"] is False
    # predict_folder now picks this threshold up
    res = predict_folder(
        patched,
        layout.train_images,
        tmp_path / "out",
        options=InferenceOptions(num_workers=0, progress=False),
    )
    assert res.threshold == result.threshold


def test_evaluate_run_missing_tiles(tmp_path: Path, patched: Path) -> None:
    (patched / "split.json").write_text(json.dumps({"val_tile_ids": ["NOPE"]}))
    with pytest.raises(KelpsegError, match=r"missing for 1 validation tile\(s\): NOPE"):
        predict.evaluate_run(
            patched, layout=DataLayout(tmp_path / "data"), options=InferenceOptions(progress=False)
        )


def test_evaluate_run_flags_a_threshold_on_the_grid_edge(
    tmp_path: Path, patched: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = DataLayout(tmp_path / "data")
    tiles = write_tiles(layout.train_images, ["V1"])
    write_mask(layout.mask_path("V1"), (tiles["V1"][NIR] > 8300).astype(np.uint8))
    (patched / "split.json").write_text(json.dumps({"val_tile_ids": ["V1"]}))
    opts = InferenceOptions(num_workers=0, progress=False)
    with caplog.at_level("WARNING", logger="kelpseg"):
        result = predict.evaluate_run(patched, layout=layout, grid=[0.1, 0.2, 0.3], options=opts)
    assert result.threshold == 0.3
    assert json.loads((patched / "threshold.json").read_text())["threshold_on_grid_edge"] is True
    assert "edge of the grid 0.10-0.30" in caplog.text
