"""MLflow bookkeeping: the tracking URI, where artifacts go, and the driver's helpers.

One place for what every MLflow user in kelpseg agrees on: training runs
(``kelpseg.train.run``), fold fan-outs and sweeps (``kelpseg.distributed``). The driver of a
sweep or fan-out prepares the store before any worker starts (creating a SQLite database or an
experiment from two processes at once fails), owns the sweep's parent run, and links every trial
run to it with the ``mlflow.parentRunId`` tag, which the MLflow UI shows as nesting.

Any tracking URI works: ``sqlite:///path/mlflow.db`` (the default, ``<output_dir>/mlflow.db``)
on a laptop or a shared file system, or ``http://<host>:5000`` of an ``mlflow server`` that
every node can reach. With a local store, artifacts go to ``<output_dir>/mlartifacts``; MLflow
records that location as an absolute ``file://`` URI, so moving the ``runs/`` folder breaks the
UI's artifact links (metrics and params stay readable). A tracking server keeps artifacts where
its ``--default-artifact-root`` says.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kelpseg.errors import KelpsegError
from kelpseg.layout import RunLayout

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 500


TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (which chooses the artifact store itself)."""
    return uri.startswith(("http://", "https://", "databricks"))


def resolve_uri(configured: str | None, output_dir: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI`` > ``configured`` > ``sqlite:///<output_dir>/mlflow.db``."""
    env = os.environ.get(TRACKING_URI_ENV)
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{Path(output_dir).resolve() / DB_FILE}"


def ui_command(uri: str) -> str:
    """The command that shows the runs of store ``uri`` (a server: its address to open)."""
    if is_server(uri):
        return f"open {uri} in a browser (the MLflow tracking server)"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


def ui_command_for_run(run_dir: str | Path) -> str | None:
    """:func:`ui_command` for the store a training run logged to (its ``mlflow.json``), if any."""
    path = RunLayout(run_dir).mlflow
    if not path.is_file():
        return None
    uri = json.loads(path.read_text()).get("tracking_uri")
    return ui_command(uri) if uri else None


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_location(output_dir: str | Path, uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``<output_dir>/mlartifacts`` for a local store.

    A tracking server chooses its own (``--default-artifact-root``), so ``None`` there: a local
    path would name a folder on this machine that the server and the other nodes cannot see.
    """
    if is_server(uri):
        return None
    return (Path(output_dir).resolve() / ARTIFACT_DIR).as_uri()


def prepare_experiment(uri: str, experiment: str, artifacts: str | None) -> str:
    """Create the store and the experiment if needed; returns the experiment id."""
    try:
        mlflow_client = client(uri)
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is not None:
            return str(found.experiment_id)
        return str(mlflow_client.create_experiment(experiment, artifact_location=artifacts))
    except KelpsegError:
        raise
    except Exception as exc:  # MLflow raises many types for a bad store
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KelpsegError(
            f"MLflow tracking URI {uri}: cannot prepare experiment {experiment!r}: {first}"
        ) from None


def flat_params(options: Mapping[str, Any]) -> dict[str, str]:
    """MLflow-friendly parameter values: lists joined by commas, long values cut."""
    out = {}
    for key, value in options.items():
        text = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
        out[key] = text[:MAX_PARAM_LENGTH]
    return out


def run_status(uri: str, run_id: str) -> str | None:
    try:
        return str(client(uri).get_run(run_id).info.status)
    except Exception:
        return None
