"""The MLflow helper: tracking URI precedence, artifact location, the `mlflow ui` hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from kelpseg import tracking


def test_local_store_keeps_artifacts_beside_the_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.artifact_location(tmp_path, uri) == (tmp_path.resolve() / "mlartifacts").as_uri()


@pytest.mark.parametrize("uri", ["http://tracking:5000", "https://mlflow.example.org", "databricks"])
def test_a_server_chooses_its_own_artifact_store(tmp_path: Path, uri: str) -> None:
    assert tracking.artifact_location(tmp_path, uri) is None


def test_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (
        tracking.resolve_uri(None, tmp_path / "runs")
        == f"sqlite:///{(tmp_path / 'runs').resolve()}/mlflow.db"
    )
    assert tracking.resolve_uri("http://h:5000", tmp_path) == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert tracking.resolve_uri("http://h:5000", tmp_path) == "sqlite:///x.db"


def test_ui_command_for_a_local_store_and_a_server(tmp_path: Path) -> None:
    assert tracking.ui_command("sqlite:////work/runs/mlflow.db") == (
        "mlflow ui --backend-store-uri sqlite:////work/runs/mlflow.db"
    )
    spaced = f"sqlite:///{tmp_path}/my runs/mlflow.db"
    assert tracking.ui_command(spaced) == f"mlflow ui --backend-store-uri '{spaced}'"
    assert "http://h:5000" in tracking.ui_command("http://h:5000")
    assert "mlflow ui" not in tracking.ui_command("http://h:5000")


def test_ui_command_for_a_run_reads_its_mlflow_file(tmp_path: Path) -> None:
    assert tracking.ui_command_for_run(tmp_path) is None  # tracking was off
    (tmp_path / "mlflow.json").write_text('{"tracking_uri": "sqlite:////r/mlflow.db", "run_id": "1"}')
    assert tracking.ui_command_for_run(tmp_path) == "mlflow ui --backend-store-uri sqlite:////r/mlflow.db"
