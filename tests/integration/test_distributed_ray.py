"""Sweeps and fold fan-out on an embedded 2-CPU Ray, on a tiny generated dataset.

One Ray instance serves the whole module. Every training is a resnet18 UNet with a 3-level decoder
on 64-pixel crops, 2 epochs of 2 steps, so a trial or a fold takes seconds of compute; most of the
time is process start-up.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from builders import prepared_synthetic, tiny_train_config
from kelpseg.distributed.folds import available_folds, train_folds
from kelpseg.distributed.runner import CRASH_EPOCH_ENV, CRASH_MARKER_ENV
from kelpseg.distributed.sweep import run_sweep
from kelpseg.layout import DataLayout
from kelpseg.recipes import sweep_space
from kelpseg.train.config import TrainConfig

pytestmark = pytest.mark.slow

N_TRAIN, N_TEST, N_FOLDS = 24, 4, 3
STEPS = 2
SMOKE_SPACE = sweep_space("cpu-smoke")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    root = tmp_path_factory.mktemp("distributed") / "data"
    return prepared_synthetic(root, N_TRAIN, N_TEST, N_FOLDS, seed=5)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    from kelpseg.distributed.ray_runtime import init_ray, shutdown_ray

    info = init_ray(None, num_cpus=2)
    assert info.embedded and info.address.startswith("127.0.0.1:")
    yield
    shutdown_ray()


def tiny_config(layout: DataLayout, out: Path, **overrides: Any) -> TrainConfig:
    return tiny_train_config(layout, out, STEPS, **overrides)


def _epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def _crash_once(monkeypatch: pytest.MonkeyPatch, markers: Path, epoch: int = 0) -> None:
    monkeypatch.setenv(CRASH_EPOCH_ENV, str(epoch))
    monkeypatch.setenv(CRASH_MARKER_ENV, str(markers))


def test_sweep_ranks_trials_in_mlflow_and_survives_a_crashed_trial(
    layout: DataLayout, tmp_path: Path, ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    markers = tmp_path / "markers"
    _crash_once(monkeypatch, markers)  # every trial's worker dies once, after epoch 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = tiny_config(layout, tmp_path / "runs", mlflow=True, mlflow_tracking_uri=uri)
    result = run_sweep(
        SMOKE_SPACE,
        base,
        name="smoke",
        overrides=[f"samples_per_epoch={2 * STEPS}", "batch_size=2"],
        progress=False,
    )

    table = result.table
    assert len(table) == 2 and list(table["status"]) == ["finished", "finished"]
    assert list(table["rank"]) == [1, 2]
    assert table["best_score"].is_monotonic_decreasing
    assert sorted(table["param.loss"]) == ["dice", "dice+0.5*bce"]
    assert ((table["param.lr"] >= 1e-3) & (table["param.lr"] <= 5e-3)).all()
    assert result.best is not None and result.best["trial_id"] == table.iloc[0]["trial_id"]
    assert result.sweep_dir == tmp_path / "runs" / "sweeps" / "smoke"
    saved = pd.read_parquet(result.sweep_dir / "trials.parquet")
    assert list(saved["trial_id"]) == list(table["trial_id"])

    for row in table.to_dict("records"):
        run_dir = Path(row["run_dir"])
        assert run_dir.parent == result.sweep_dir / "runs"
        # The first attempt died after epoch 0; the restarted trial resumed from last.ckpt.
        assert (markers / f"{run_dir.name}.crashed").is_file()
        assert _epochs(run_dir) == [0, 1]
        progress = pd.read_csv(result.sweep_dir / f"trial-{row['trial_id']}" / "progress.csv")
        assert list(progress["epochs_done"]) == [1, 2]  # Tune saw epoch 0 once: no restart from scratch
        last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert last["epoch"] == 1 and last["global_step"] == 2 * STEPS
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert row["best_val_dice"] == pytest.approx(summary["best_val_dice"], abs=1e-6)
        config = TrainConfig.from_yaml(run_dir / "config.yaml")
        assert config.loss == row["param.loss"] and config.lr == pytest.approx(row["param.lr"])
        assert config.epochs == 2 and config.decoder_channels == [32, 16, 8]  # the space's fixed options

    client = MlflowClient(uri)
    parent = client.get_run(str(result.parent_run_id))
    assert parent.info.status == "FINISHED" and parent.data.tags["kelpseg.sweep"] == "smoke"
    assert parent.data.metrics["best_val_dice"] == pytest.approx(float(table.iloc[0]["best_val_dice"]))
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    by_trial = {c.data.tags["kelpseg.trial_id"]: c for c in children}
    for row in table.to_dict("records"):
        child = by_trial[row["trial_id"]]
        assert child.info.status == "FINISHED"
        assert child.data.params["loss"] == row["param.loss"]
        assert float(child.data.params["lr"]) == pytest.approx(row["param.lr"])
        assert child.data.metrics["final_val_dice"] == pytest.approx(row["final_val_dice"], abs=1e-6)
        assert len(client.get_metric_history(child.info.run_id, "val/dice")) == 2

    # The driver can come back to a sweep: everything finished, so nothing runs again.
    again = run_sweep(SMOKE_SPACE, base, name="smoke", resume=True, progress=False)
    assert list(again.table["trial_id"]) == list(table["trial_id"])
    assert again.parent_run_id == result.parent_run_id


def test_a_failing_trial_is_reported_and_does_not_stop_the_sweep(
    layout: DataLayout, tmp_path: Path, ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "name: failing\nmax_failures: 0\nmax_concurrent_trials: 2\nparams:\n  fold: {grid: [0, 1]}\n"
    )
    # Fold 1 reads a split file with no split_1 column: that trial fails, fold 0 trains.
    table = pd.read_parquet(layout.split_path("cross_val")).drop(columns=["split_1", "split_2"])
    split = tmp_path / "split.parquet"
    table.to_parquet(split)
    base = tiny_config(layout, tmp_path / "runs", split_path=str(split), epochs=1)
    # A storage URI (as for s3://): Tune's state goes there, run directories stay on local disk
    # and each checkpoint carries the run directory's files.
    store = (tmp_path / "store").as_uri()
    result = run_sweep(space, base, name="failing", storage_path=store, progress=False)
    rows = {int(r["param.fold"]): r for r in result.table.to_dict("records")}
    assert rows[0]["status"] == "finished" and rows[0]["rank"] == 1
    assert rows[1]["status"] == "failed" and pd.isna(rows[1]["rank"])
    assert "no column 'split_1' for fold 1" in rows[1]["error"]
    assert list(result.table["status"]) == ["finished", "failed"]  # failures rank last

    assert result.path == f"{store}/failing"
    assert result.sweep_dir == tmp_path / "runs" / "sweeps" / "failing"
    assert Path(rows[0]["run_dir"]).parent == result.sweep_dir / "runs"
    (checkpoint,) = (tmp_path / "store" / "failing" / f"trial-{rows[0]['trial_id']}").glob("checkpoint_*")
    assert json.loads((checkpoint / "run.json").read_text()) == {"run_dir": rows[0]["run_dir"], "epoch": 0}
    assert {"config.yaml", "metrics.csv", "split.json"} <= {p.name for p in checkpoint.iterdir()}
    assert (checkpoint / "checkpoints" / "last.ckpt").is_file()


def test_two_folds_train_in_parallel_and_a_killed_fold_resumes(
    layout: DataLayout, tmp_path: Path, ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    markers = tmp_path / "markers"
    _crash_once(monkeypatch, markers)
    (markers / "tiny-fold0.crashed").parent.mkdir(parents=True)
    (markers / "tiny-fold0.crashed").write_text("already crashed once\n")  # only fold 1 dies
    config = tiny_config(layout, tmp_path, run_name="tiny")
    assert available_folds(config) == [0, 1, 2]

    result = train_folds(config, [0, 1], parallel=True, cpus_per_fold=1, max_retries=1, progress=False)

    assert result.ok and result.parallel
    rows = {o.fold: o for o in result.outcomes}
    assert rows[0].attempts == 1 and not rows[0].resumed
    assert rows[1].attempts == 2 and rows[1].resumed  # killed after epoch 0, retried, resumed
    for fold in (0, 1):
        run_dir = tmp_path / f"tiny-fold{fold}"
        assert rows[fold].run_dir == str(run_dir) and rows[fold].status == "finished"
        assert _epochs(run_dir) == [0, 1]
        assert rows[fold].epochs == 2 and rows[fold].best_val_dice is not None
        assert json.loads((run_dir / "split.json").read_text())["fold"] == fold
        last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert last["epoch"] == 1 and last["global_step"] == 2 * STEPS
    assert [r["fold"] for r in result.rows()] == [0, 1]

    # Running the folds again finds them finished and skips them.
    monkeypatch.delenv(CRASH_EPOCH_ENV)
    again = train_folds(config, [0, 1], parallel=False, progress=False)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]


def test_sequential_folds_retry_in_process_and_stop_on_user_errors(
    layout: DataLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kelpseg.errors import KelpsegError

    _crash_once(monkeypatch, tmp_path / "markers")
    config = tiny_config(layout, tmp_path, run_name="seq")
    result = train_folds(config, [2], parallel=False, max_retries=1, progress=False)
    (outcome,) = result.outcomes
    assert outcome.status == "finished" and outcome.attempts == 2 and outcome.resumed
    assert _epochs(tmp_path / "seq-fold2") == [0, 1]

    with pytest.raises(KelpsegError, match=r"fold\(s\) \[7\] not in the CV split; folds available: 0, 1, 2"):
        train_folds(config, [0, 7], parallel=False, progress=False)
    # Without retries the simulated crash is final, and reported.
    monkeypatch.setenv(CRASH_MARKER_ENV, str(tmp_path / "other-markers"))
    failed = train_folds(config.model_copy(update={"run_name": "once"}), [0], max_retries=0, progress=False)
    assert failed.outcomes[0].status == "failed" and not failed.ok
    assert "SimulatedCrash: fault injection: simulated crash after epoch 0" in failed.outcomes[0].error
    assert failed.outcomes[0].epochs == 1


def test_scene_series_on_ray_equals_the_sequential_series(
    layout: DataLayout, tmp_path: Path, ray_session: None
) -> None:
    import ray

    from kelpseg.infer.predict import InferenceOptions
    from kelpseg.scene.mapping import SceneOptions
    from kelpseg.scene.synthetic import write_synthetic_scene
    from kelpseg.scene.timeseries import map_series
    from kelpseg.train.run import train

    run = train(tiny_config(layout, tmp_path / "runs", run_name="scene"), progress=False)
    scenes = tmp_path / "scenes"
    for date, sensor, vigour in [("2019-08-01", "ETM+", 0.6), ("2021-07-20", "OLI-2", 1.0)]:
        write_synthetic_scene(
            scenes, 200, 200, seed=5, date=date, sensor=sensor, kelp_vigour=vigour, with_dem=False
        )
    options = SceneOptions(
        overlap=0.0, inference=InferenceOptions(num_workers=0, progress=False, batch_size=4)
    )
    sequential, _, rows = map_series(scenes, [run], tmp_path / "seq", options)
    on_ray, _, _ = map_series(scenes, [run], tmp_path / "ray", options, ray=True)
    assert on_ray.read_text() == sequential.read_text()
    assert [r["date"] for r in rows] == ["2019-08-01", "2021-07-20"] and rows[0][
        "region_ha"
    ] == 200 * 200 * 0.09
    for row in rows:  # one Ray task per scene, each published its own outputs
        assert (tmp_path / "ray" / row["scene_id"] / f"{row['scene_id']}_kelp.tif").is_file()
    assert ray.is_initialized()  # the module's Ray instance was not shut down by the series
