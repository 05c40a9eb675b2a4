"""MLflow bookkeeping done by the driver of a sweep or fold fan-out.

Trials and folds log their own runs through ``kelpseg.train.run`` (params, per-epoch metrics,
artifacts). The driver prepares the store before any worker starts (creating a SQLite database
or an experiment from two processes at once fails), owns the sweep's parent run, and links every
trial run to it with the ``mlflow.parentRunId`` tag, which the MLflow UI shows as nesting.

Any tracking URI works: ``sqlite:///path/mlflow.db`` on a laptop or a shared file system, or
``http://<host>:5000`` of an ``mlflow server`` that every node can reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kelpseg.errors import KelpsegError

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 500


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_location(output_dir: str | Path, uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``<output_dir>/mlartifacts`` for a local store.

    A tracking server chooses its own (``--default-artifact-root``), so ``None`` there.
    """
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (Path(output_dir).resolve() / "mlartifacts").as_uri()


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
