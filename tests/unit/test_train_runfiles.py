"""Run helpers: names, tracking URI, precision on CPU, callbacks, atomic checkpoints, previews."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, StochasticWeightAveraging

from kelpseg.train.config import TrainConfig
from kelpseg.train.previews import choose_preview_tiles, write_preview
from kelpseg.train.run import (
    AtomicCheckpointIO,
    EpochMetricsCallback,
    TopKCheckpoint,
    _callbacks,
    default_run_name,
    resolve_precision,
    resolve_tracking_uri,
)


def test_default_run_name() -> None:
    config = TrainConfig(encoder="resnet18", fold=3)
    now = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert default_run_name(config, now) == "unet-resnet18-fold3-20240102T030405Z"


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrainConfig(output_dir=str(tmp_path / "runs"))
    assert resolve_tracking_uri(config) == f"sqlite:///{(tmp_path / 'runs').resolve()}/mlflow.db"
    config = TrainConfig(output_dir=str(tmp_path), mlflow_tracking_uri="http://tracking:5000")
    assert resolve_tracking_uri(config) == "http://tracking:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert resolve_tracking_uri(config) == "sqlite:///elsewhere.db"


def test_16_mixed_becomes_bf16_on_cpu() -> None:
    with pytest.warns(UserWarning, match="16-mixed needs a GPU; using bf16-mixed"):
        assert resolve_precision(TrainConfig(precision="16-mixed", accelerator="cpu")) == "bf16-mixed"
    assert resolve_precision(TrainConfig(precision="bf16-mixed", accelerator="cpu")) == "bf16-mixed"
    assert resolve_precision(TrainConfig(precision="32-true")) == "32-true"


def test_callbacks_follow_the_config(tmp_path: Path) -> None:
    plain = _callbacks(TrainConfig(), tmp_path, [])
    checkpoints = [c for c in plain if isinstance(c, ModelCheckpoint)]
    assert [(c.filename, c.monitor) for c in checkpoints] == [("best", "val/dice"), ("last", None)]
    assert any(isinstance(c, EpochMetricsCallback) for c in plain)
    assert not any(isinstance(c, EarlyStopping | StochasticWeightAveraging) for c in plain)

    config = TrainConfig(
        early_stopping_patience=4,
        swa=True,
        swa_epoch_start=5,
        save_top_k=3,
        monitor_metric="val/iou",
        epochs=10,
    )
    full = _callbacks(config, tmp_path, [])
    stop = next(c for c in full if isinstance(c, EarlyStopping))
    assert (stop.monitor, stop.patience, stop.mode) == ("val/iou", 4, "max")
    swa = next(c for c in full if isinstance(c, StochasticWeightAveraging))
    assert swa._swa_epoch_start == 5 and isinstance(swa._swa_epoch_start, int)
    top = next(c for c in full if isinstance(c, TopKCheckpoint))
    assert top.save_top_k == 3
    keys = [c.state_key for c in full if isinstance(c, ModelCheckpoint)]
    assert len(set(keys)) == len(keys) == 3


def test_atomic_checkpoint_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(2)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1

    class Unpicklable:
        def __reduce__(self) -> None:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"epoch": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_preview_tiles_are_fixed_and_kelp_first() -> None:
    frame = pd.DataFrame({"tile_id": ["D", "A", "C", "B", "E"], "kelp_pixels": [0, 10, 500, 0, 20]})
    assert choose_preview_tiles(frame, 4) == ["C", "E", "A", "B"]
    assert choose_preview_tiles(frame, 0) == []
    assert choose_preview_tiles(frame.drop(columns="kelp_pixels"), 2) == ["A", "B"]


def test_preview_tiles_are_one_per_aoi_kelp_richest_first() -> None:
    frame = pd.DataFrame(
        {
            "tile_id": ["A1", "A2", "B1", "B2", "C1"],
            "aoi_id": ["a", "a", "b", "b", "c"],
            "kelp_pixels": [10, 900, 0, 30, 50],
        }
    )
    assert choose_preview_tiles(frame, 3) == ["A2", "C1", "B2"]
    assert choose_preview_tiles(frame, 2) == ["A2", "C1"]
    assert choose_preview_tiles(frame, 5)[:3] == ["A2", "C1", "B2"]  # more than AOIs: filled up
    assert len(set(choose_preview_tiles(frame, 5))) == 5


def test_preview_png_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(5000, 12000, size=(2, 7, 40, 40)).astype(np.float32)
    raw[0, 2, :5] = np.nan
    masks = (rng.random((2, 40, 40)) > 0.8).astype(np.uint8)
    probs = rng.random((2, 40, 40)).astype(np.float32)
    path = write_preview(
        tmp_path / "previews" / "epoch=000.png", raw, masks, probs, ["T1", "T2"], 0.5, "epoch 0"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["epoch=000.png"]
