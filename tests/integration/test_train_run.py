"""Training end to end on a tiny generated dataset: run directory, MLflow, resume, NaN guard, load_run."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch

import kelpseg
from builders import prepared_synthetic, tiny_train_config
from kelpseg.errors import KelpsegError, StageNotRunError
from kelpseg.layout import DataLayout
from kelpseg.train.config import TrainConfig
from kelpseg.train.module import NonFiniteLossError
from kelpseg.train.run import (
    METRICS_COLUMNS,
    RunDirError,
    load_run,
    resume,
    train,
)

pytestmark = pytest.mark.slow

N_TRAIN, N_TEST, N_FOLDS = 24, 4, 3
STEPS = 2  # training batches per epoch


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    root = tmp_path_factory.mktemp("train_run") / "data"
    return prepared_synthetic(root, N_TRAIN, N_TEST, N_FOLDS, seed=3)


def tiny_config(layout: DataLayout, out: Path, **overrides: Any) -> TrainConfig:
    return tiny_train_config(layout, out, STEPS, **{"preview_n_tiles": 2, "run_name": "tiny", **overrides})


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_directory_is_complete_and_tracked(
    layout: DataLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    config = tiny_config(
        layout,
        tmp_path / "runs",
        mlflow=True,
        mlflow_tracking_uri=uri,
        lr_scheduler="onecycle",
        log_every_n_steps=1,
    )
    run_dir = train(config, progress=False)

    assert run_dir == tmp_path / "runs" / "tiny"
    for name in (
        "config.yaml",
        "band_stats.json",
        "split.json",
        "metrics.csv",
        "summary.json",
        "mlflow.json",
        "provenance.json",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (
        run_dir / "checkpoints" / "last.ckpt"
    ).is_file()
    assert sorted(p.name for p in (run_dir / "previews").iterdir()) == ["epoch=000.png", "epoch=001.png"]

    assert TrainConfig.from_yaml(run_dir / "config.yaml") == config
    stats_source = layout.band_stats_path("nan", True, True)
    assert (run_dir / "band_stats.json").read_bytes() == stats_source.read_bytes()

    split = json.loads((run_dir / "split.json").read_text())
    split_path = layout.split_path("cross_val")
    table = pd.read_parquet(split_path)
    assert split["sha256"] == hashlib.sha256(split_path.read_bytes()).hexdigest()
    assert split["fold"] == 0 and Path(split["path"]) == split_path
    assert set(split["train_tile_ids"]) == set(table.loc[table["split_0"] == "train", "tile_id"])
    assert set(split["val_tile_ids"]) == set(table.loc[table["split_0"] == "val", "tile_id"])

    rows = _rows(run_dir)
    assert list(rows[0]) == list(METRICS_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for row in rows:
        assert 0.0 <= float(row["val/dice"]) <= 1.0 and float(row["train/loss"]) >= 0 and float(row["lr"]) > 0

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    best = max(rows, key=lambda r: float(r["val/dice"]))
    assert summary["best_val_dice"] == pytest.approx(float(best["val/dice"]))
    assert summary["best_epoch"] == int(best["epoch"])
    assert summary["train_samples_per_s"] > 0 and summary["wall_time_s"] > 0
    best_ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best_ckpt["epoch"] == summary["best_epoch"]

    tracking = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(uri)
    run = client.get_run(tracking["run_id"])
    assert run.data.params["encoder"] == "resnet18" and run.data.params["bands"] == "R,G,B,SWIR,NIR,QA,DEM"
    assert run.data.metrics["val/dice"] == pytest.approx(float(rows[-1]["val/dice"]), abs=1e-5)
    assert {"train/loss", "lr", "train/loss_epoch", "best_score"} <= set(run.data.metrics)
    assert len(client.get_metric_history(tracking["run_id"], "train/loss")) == 2 * STEPS  # one per step
    artifacts = {a.path for a in client.list_artifacts(tracking["run_id"])}
    assert {"config.yaml", "metrics.csv", "summary.json", "previews", "provenance.json"} <= artifacts
    assert "checkpoints" not in artifacts  # mlflow_log_checkpoint is off by default

    recorded = json.loads((run_dir / "provenance.json").read_text())
    assert recorded["kelpseg_version"] == kelpseg.__version__
    assert recorded["packages"]["torch"] == torch.__version__.split("+")[0]
    assert set(recorded["packages"]) >= {"torch", "segmentation-models-pytorch", "timm", "lightning"}
    assert run.data.tags["provenance.kelpseg_version"] == kelpseg.__version__
    assert run.data.tags["provenance.git_commit"] == str(recorded["git_commit"])
    assert run.data.tags["provenance.lock_sha256"] == str(recorded["lock_sha256"])
    assert run.data.tags["provenance.lightning"] == recorded["packages"]["lightning"]


def test_resume_after_an_interruption_continues_the_run(layout: DataLayout, tmp_path: Path) -> None:
    class Interrupt(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated kill")

    config = tiny_config(layout, tmp_path, lr_scheduler="onecycle", preview_n_tiles=0)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(config, progress=False, callbacks=[Interrupt()])
    run_dir = tmp_path / "tiny"
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["epoch"] == 0 and first["global_step"] == STEPS
    assert first["lr_schedulers"][0]["last_epoch"] == STEPS
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert [r["epoch"] for r in _rows(run_dir)] == ["0"]

    with pytest.raises(RunDirError, match="already exists; resume it with `kelpseg train --resume"):
        train(config, progress=False)

    assert resume(run_dir, progress=False) == run_dir
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and last["global_step"] == 2 * STEPS
    assert last["lr_schedulers"][0]["last_epoch"] == 2 * STEPS  # the OneCycle schedule went on
    assert last["lr_schedulers"][0]["total_steps"] == 2 * STEPS
    assert [r["epoch"] for r in _rows(run_dir)] == ["0", "1"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 2


def test_validation_every_second_epoch(layout: DataLayout, tmp_path: Path) -> None:
    """Val columns only on validated epochs; the plateau scheduler steps once per validation."""
    config = tiny_config(
        layout,
        tmp_path,
        epochs=4,
        val_every_n_epochs=2,
        lr_scheduler="reduce_lr_on_plateau",
        preview_n_tiles=0,
    )
    run_dir = train(config, progress=False)
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["val/dice"] != "" for r in rows] == [False, True, False, True]
    assert all(r["train/loss"] != "" for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_epoch"] in (1, 3)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # one step after epoch 1; the step after epoch 3 follows the last checkpoint
    assert last["lr_schedulers"][0]["last_epoch"] == 1


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    layout: DataLayout, tmp_path: Path
) -> None:
    class NanLoss(torch.nn.Module):
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return logits.mean() * float("nan")

    class PoisonLoss(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            if trainer.current_epoch == 1:
                module.loss_fn = NanLoss()

    with pytest.raises(NonFiniteLossError, match=rf"training loss is nan at global step {STEPS} \(epoch 1\)"):
        train(tiny_config(layout, tmp_path, preview_n_tiles=0), progress=False, callbacks=[PoisonLoss()])
    last = torch.load(tmp_path / "tiny" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "tiny" / "summary.json").read_text())["status"] == "failed"


def test_load_run_rebuilds_a_working_model(layout: DataLayout, tmp_path: Path) -> None:
    from kelpseg.io.tiles import read_tile

    run_dir = train(tiny_config(layout, tmp_path, epochs=1, preview_n_tiles=0), progress=False)
    loaded = load_run(run_dir)
    assert loaded.checkpoint == run_dir / "checkpoints" / "best.ckpt"
    assert not loaded.model.training and loaded.config.run_name == "tiny"
    assert set(loaded.band_stats) == {"R", "G", "B", "SWIR", "NIR", "QA", "DEM", "DEMWM", "NDVI"}
    tile_id = json.loads((run_dir / "split.json").read_text())["val_tile_ids"][0]
    raw = torch.from_numpy(read_tile(layout.image_path(tile_id, "train")))[None]
    x = loaded.transform(raw)
    assert x.shape == (1, 9, 352, 352) and torch.isfinite(x).all()
    with torch.no_grad():
        logits = loaded.model(x)
    assert logits.shape == (1, 1, 352, 352)
    assert loaded.unpad(logits).shape == (1, 1, 350, 350)
    probs = loaded.predict_proba(raw)
    assert probs.shape == (1, 350, 350) and probs.min() >= 0 and probs.max() <= 1
    last = load_run(run_dir, checkpoint="last")
    torch.testing.assert_close(last.predict_proba(raw), probs)  # one epoch: best is last

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        RunDirError, match=r"empty: not a run directory: expected config\.yaml \(kelpseg run\)"
    ):
        load_run(empty)
    (run_dir / "checkpoints" / "best.ckpt").unlink()
    with pytest.raises(RunDirError, match=r"best\.ckpt: checkpoint not found"):
        load_run(run_dir)


def test_missing_inputs_fail_before_training(layout: DataLayout, tmp_path: Path) -> None:
    with pytest.raises(KelpsegError, match="no column 'split_7' for fold 7; folds available: 0, 1, 2"):
        train(tiny_config(layout, tmp_path, fold=7), progress=False)
    with pytest.raises(StageNotRunError, match=r"run `kelpseg band-stats` \(make calculate-band-stats"):
        train(
            tiny_config(layout, tmp_path, band_stats_path=str(tmp_path / "none.json"), run_name="b"),
            progress=False,
        )
    with pytest.raises(StageNotRunError, match=r"run `kelpseg split` \(make train-val-test-split-cv\) first"):
        train(
            tiny_config(layout, tmp_path, split_path=str(tmp_path / "none.parquet"), run_name="c"),
            progress=False,
        )
    assert not any((tmp_path / name / "checkpoints").exists() for name in ("tiny", "b", "c"))
