"""A forced collapse (an absurdly small learning rate) is caught: log, summary.json, MLflow, fold tables."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from builders import prepared_synthetic, tiny_train_config
from kelpseg.distributed.folds import train_folds
from kelpseg.layout import DataLayout
from kelpseg.pipeline import BELOW_BASELINE, PipelineOptions, run_pipeline
from kelpseg.train.config import TrainConfig
from kelpseg.train.run import train

pytestmark = pytest.mark.slow

#: The model barely moves from its random initialisation: it cannot beat the all-background level.
ABSURD_LR = 1e-9


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    return prepared_synthetic(tmp_path_factory.mktemp("collapse") / "data", 24, 4, 3, seed=3)


def test_a_run_that_does_not_learn_is_flagged_in_log_summary_and_mlflow(
    layout: DataLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    config = tiny_train_config(
        layout,
        tmp_path / "runs",
        2,
        run_name="collapse",
        lr=ABSURD_LR,
        learning_check_after=2,
        mlflow=True,
        mlflow_tracking_uri=uri,
        limit_val_batches=None,
    )
    with caplog.at_level(logging.WARNING, logger="kelpseg.train.health"):
        run_dir = train(config, progress=False)

    assert "run collapse is not learning: after 2 validations" in caplog.text
    summary = json.loads((run_dir / "summary.json").read_text())
    learning = summary["learning"]
    assert summary["status"] == "finished"
    assert learning["status"] == "not_learning" and learning["reason"] in ("low_dice", "no_kelp_predicted")
    assert learning["best_val_dice"] < 0.2 and learning["flagged_epoch"] == 1
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    tracked = MlflowClient(uri).get_run(run_id).data
    assert tracked.tags["learning"] == "not_learning"
    assert tracked.metrics["not_learning"] == 1.0


def test_train_all_folds_marks_the_fold_and_retries_it_with_the_fallback(
    layout: DataLayout, tmp_path: Path
) -> None:
    config = tiny_train_config(
        layout, tmp_path / "runs", 2, run_name="cv", lr=ABSURD_LR, epochs=1, learning_check_after=1
    )
    result = train_folds(config, [0], progress=False, retry_not_learning=1)
    (row,) = result.rows()
    assert row["learning"] == "NOT LEARNING" and row["retried"] == 1
    assert row["run_dir"].endswith("cv-fold0-retry1")
    retry = TrainConfig.from_yaml(Path(row["run_dir"]) / "config.yaml")
    assert retry.lr == pytest.approx(ABSURD_LR / 2) and retry.seed == config.seed + 1
    first = json.loads((tmp_path / "runs" / "cv-fold0" / "summary.json").read_text())
    assert first["learning"]["status"] == "not_learning"

    healthy = tiny_train_config(layout, tmp_path / "runs", 2, run_name="ok", epochs=1, learning_check_after=0)
    (row,) = train_folds(healthy, [1], progress=False, retry_not_learning=1).rows()
    assert row["learning"] == "unchecked" and row["retried"] == 0


def test_the_run_fold_table_marks_a_collapsed_fold(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    options = PipelineOptions(
        workers=2,
        folds=1,
        n_splits=3,
        n_train=24,
        n_test=4,
        seed=3,
        retry_not_learning=1,
        overrides=[
            f"lr={ABSURD_LR}",
            "epochs=1",
            "learning_check_after=1",
            "samples_per_epoch=8",
            "batch_size=4",
            "train_crop_size=64",
            "num_workers=0",
            "preview_n_tiles=0",
            f"output_dir={tmp_path / 'runs'}",
            "mlflow=false",
        ],
        progress=False,
    )
    messages: list[str] = []
    summary = run_pipeline(layout, options, say=messages.append)
    (row,) = summary.fold_rows
    assert row["learning"] == "not_learning" and row["retried"] == 1
    assert row["val_dice"] < row["ndvi_baseline_val_dice"]
    assert row["check"] == f"{BELOW_BASELINE}; NOT LEARNING"
    assert any("fold 0 did not learn" in m and "retry 1 of 1" in m for m in messages)
    assert any(m.startswith("warning: fold 0: BELOW NDVI BASELINE; NOT LEARNING") for m in messages)
    written = json.loads((layout.root / "run-summary.json").read_text())
    assert written["folds"][0]["check"] == row["check"]
