"""Everything pointed at a shared MLflow tracking server (started here on 127.0.0.1, always stopped).

A fold trained as a Ray task logs to the server named by ``MLFLOW_TRACKING_URI`` in the driver: the
variable travels to the worker, and the run, its params and its val/dice history are on the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kelpseg.layout import DataLayout
from kelpseg.train.config import TrainConfig

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mlflow_executable() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.is_file() else [shutil.which("mlflow") or "mlflow"]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            *_mlflow_executable(),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers it forks are stopped with it
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not ready after {READY_TIMEOUT_S} s")
            time.sleep(0.25)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    from kelpseg.prep.aoi import group_aois
    from kelpseg.prep.band_stats import compute_band_stats
    from kelpseg.prep.eda import run_eda
    from kelpseg.prep.split import make_cv_split
    from kelpseg.synthetic import generate_dataset

    root = tmp_path / "data"
    generate_dataset(root, 16, 2, seed=7, workers=2, progress=False)
    layout = DataLayout(root)
    group_aois(layout, workers=2, progress=False)
    run_eda(layout, workers=2, progress=False)
    compute_band_stats(layout, indices=["DEMWM", "NDVI"], workers=2, progress=False)
    make_cv_split(layout, n_splits=2)
    return layout


def test_a_fold_on_ray_logs_to_the_shared_tracking_server(
    mlflow_server: str, layout: DataLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from kelpseg.distributed.folds import train_folds
    from kelpseg.distributed.ray_runtime import shutdown_ray

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    config = TrainConfig(
        data_dir=str(layout.root),
        output_dir=str(tmp_path / "runs"),
        run_name="shared",
        experiment="kelpseg-shared-server",
        encoder="resnet18",
        decoder_channels=[16, 8, 4],
        spectral_indices=["DEMWM", "NDVI"],
        train_crop_size=64,
        batch_size=2,
        samples_per_epoch=4,
        num_workers=0,
        epochs=2,
        limit_val_batches=2,
        preview_n_tiles=0,
        accelerator="cpu",
        devices=1,
        mlflow=True,
    )
    try:
        result = train_folds(config, [1], parallel=True, progress=False)
    finally:
        shutdown_ray()
    assert result.ok, result.outcomes

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("kelpseg-shared-server")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "shared-fold1" and run.info.status == "FINISHED"
    assert run.data.params["fold"] == "1" and run.data.params["encoder"] == "resnet18"
    history = client.get_metric_history(run.info.run_id, "val/dice")
    assert len(history) == 2 and all(0.0 <= m.value <= 1.0 for m in history)
    assert run.data.metrics["best_score"] == pytest.approx(result.outcomes[0].best_val_dice, abs=1e-6)
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing went to a local store
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.csv", "summary.json"} <= artifacts
