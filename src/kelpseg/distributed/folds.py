"""Train every CV fold: one after another in this process, or fanned out as Ray tasks.

``train_folds(config, folds, parallel=...)`` is a deterministic map over fold ids (never random
sampling, unlike the reference's sweep-based fold training). Fold ``k`` runs ``config`` with
``fold=k`` under the run name ``<base>-fold<k>``, where ``<base>`` is ``config.run_name`` or
``<architecture>-<encoder>-<UTC timestamp>``. The run names being fixed, an attempt that dies
(crash, pre-empted node, Ctrl-C of the worker) is retried up to ``max_retries`` times and the
retry resumes from the fold's ``checkpoints/last.ckpt`` (see :mod:`kelpseg.distributed.runner`);
running the same command again with the same ``run_name`` skips the folds that finished and
resumes the others.

Parallel mode asks Ray for ``cpus_per_fold`` CPUs and ``gpus_per_fold`` GPUs per fold (fractions
share a GPU), embedded on this machine unless ``ray_address`` / ``$RAY_ADDRESS`` names a cluster.
Paths in the config are made absolute first; on a cluster they must be on storage every node
mounts. A fold whose input is wrong (a :class:`KelpsegError`) is not retried.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from kelpseg import tracking
from kelpseg.distributed.ray_runtime import absolute_config, apply_env, forwarded_env, init_ray
from kelpseg.distributed.runner import fault_callbacks, read_summary, train_or_resume
from kelpseg.errors import KelpsegError
from kelpseg.layout import DataLayout
from kelpseg.train.config import TrainConfig
from kelpseg.train.health import NOT_LEARNING, fallback_config, is_not_learning

log = logging.getLogger(__name__)

FOLD_COLUMNS = (
    "fold",
    "run_name",
    "status",
    "best_val_dice",
    "epochs",
    "seconds",
    "attempts",
    "resumed",
    "learning",
    "retried",
    "error",
    "run_dir",
)


@dataclass
class FoldOutcome:
    """One fold's result row."""

    fold: int
    run_name: str
    run_dir: str
    status: str  # finished | skipped (finished earlier) | failed | <summary status>
    best_val_dice: float | None = None
    epochs: int | None = None
    seconds: float | None = None
    attempts: int = 0
    resumed: bool = False
    #: the learning check of the fold's (last) run: ok | NOT LEARNING | recovered | unchecked
    learning: str = ""
    #: retries with the fallback recipe after a run that did not learn (kelpseg.train.health)
    retried: int = 0
    error: str = ""


@dataclass
class FoldsResult:
    """Every fold's outcome, in the order asked, and the wall time of the whole fan-out."""

    outcomes: list[FoldOutcome]
    parallel: bool
    wall_time_s: float

    @property
    def ok(self) -> bool:
        return all(o.status in ("finished", "skipped") for o in self.outcomes)

    @property
    def run_dirs(self) -> list[Path]:
        return [Path(o.run_dir) for o in self.outcomes]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(o) for o in self.outcomes], columns=list(FOLD_COLUMNS))

    def rows(self) -> list[dict[str, Any]]:
        """Rows for a printed table (``None`` shown as empty)."""
        return [
            {k: "" if v is None else v for k, v in asdict(o).items() if k in FOLD_COLUMNS}
            for o in self.outcomes
        ]


def available_folds(config: TrainConfig, layout: DataLayout | None = None) -> list[int]:
    """Fold numbers of the config's CV split table (its ``split_<k>`` columns)."""
    from kelpseg.train.datamodule import fold_columns, read_split_table

    layout = layout if layout is not None else DataLayout(Path(config.data_dir))
    table = read_split_table(config.resolved_split_path(layout))
    return [int(c.removeprefix("split_")) for c in fold_columns(table)]


def fold_configs(config: TrainConfig, folds: list[int], now: datetime | None = None) -> list[TrainConfig]:
    """One config per fold: ``fold=k``, ``run_name=<base>-fold<k>``, absolute paths."""
    base = config.run_name
    if not base:
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        base = f"{config.architecture}-{config.encoder.replace('/', '_')}-{stamp}"
    config = absolute_config(config)
    return [
        TrainConfig.from_dict(
            {**config.to_dict(), "fold": k, "run_name": f"{base}-fold{k}"}, source="fold config"
        )
        for k in folds
    ]


def _check_folds(config: TrainConfig, folds: list[int], layout: DataLayout | None) -> None:
    if not folds:
        raise KelpsegError("no folds to train")
    dupes = sorted({f for f in folds if folds.count(f) > 1})
    if dupes:
        raise KelpsegError(f"fold(s) listed more than once: {dupes}")
    known = available_folds(config, layout)
    missing = [f for f in folds if f not in known]
    if missing:
        raise KelpsegError(
            f"fold(s) {missing} not in the CV split; folds available: {', '.join(map(str, known))}"
        )


def _run_fold(
    config_dict: dict[str, Any],
    layout: DataLayout | None,
    env: dict[str, str],
    in_worker: bool,
    progress: bool,
    retry_not_learning: int = 0,
) -> dict[str, Any]:
    """One attempt at one fold (runs in a Ray worker or in-process).

    A run that did not learn is trained again with the fallback recipe
    (:func:`kelpseg.train.health.fallback_config`), up to ``retry_not_learning`` times; the
    result is the last run's.
    """
    if in_worker:
        apply_env(env)
    base = TrainConfig.from_dict(config_dict, source="fold config")
    started = time.perf_counter()
    config, retried = base, 0
    while True:
        outcome = train_or_resume(
            config,
            layout=layout,
            progress=progress,
            callbacks=fault_callbacks(str(config.run_name), hard=in_worker),
        )
        if retried >= retry_not_learning or not is_not_learning(outcome.summary):
            break
        retried += 1
        config = fallback_config(base, retried)
        log.warning(
            "fold %d did not learn (%s); retry %d of %d: lr %.3g, seed %d, run %s",
            base.fold,
            outcome.run_dir,
            retried,
            retry_not_learning,
            config.lr,
            config.seed,
            config.run_name,
        )
    return {
        "run_dir": str(outcome.run_dir),
        "action": outcome.action,
        "summary": outcome.summary,
        "seconds": round(time.perf_counter() - started, 2),
        "retried": retried,
    }


def _one_line(exc: BaseException) -> str:
    """The most telling line of an error (Ray wraps the worker's traceback around the cause)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    name = type(exc).__name__
    return (f"{name}: {line}" if line and not line.startswith(name) else line or name)[:300]


def _is_user_error(exc: BaseException) -> bool:
    cause = getattr(exc, "cause", None)
    return isinstance(exc, KelpsegError) or isinstance(cause, KelpsegError)


def _fill(outcome: FoldOutcome, result: dict[str, Any]) -> None:
    summary = result.get("summary") or {}
    outcome.run_dir = result.get("run_dir", outcome.run_dir)
    outcome.status = (
        "skipped" if result.get("action") == "skipped" else str(summary.get("status", "finished"))
    )
    outcome.best_val_dice = summary.get("best_val_dice")
    outcome.epochs = summary.get("epochs_done")
    outcome.resumed = outcome.resumed or result.get("action") == "resumed"
    outcome.learning = _learning_mark(summary)
    outcome.retried = int(result.get("retried", 0))


def _learning_mark(summary: dict[str, Any]) -> str:
    """The fold table's learning column: a run that did not learn is written in capitals."""
    status = str((summary.get("learning") or {}).get("status", ""))
    return "NOT LEARNING" if status == NOT_LEARNING else status


def _fail(outcome: FoldOutcome, exc: BaseException) -> None:
    outcome.status = "failed"
    outcome.error = _one_line(exc)
    summary = read_summary(Path(outcome.run_dir))
    outcome.best_val_dice = summary.get("best_val_dice")
    outcome.epochs = summary.get("epochs_done")
    outcome.learning = _learning_mark(summary)


def train_folds(
    config: TrainConfig,
    folds: list[int],
    *,
    parallel: bool = False,
    ray_address: str | None = None,
    cpus_per_fold: float = 1.0,
    gpus_per_fold: float = 0.0,
    max_retries: int = 2,
    layout: DataLayout | None = None,
    progress: bool = True,
    retry_not_learning: int = 0,
) -> FoldsResult:
    """Train ``folds`` of ``config`` (see the module docstring); returns one row per fold.

    ``retry_not_learning``: how often a fold whose run did not learn is trained again with the
    fallback recipe (half the learning rate, the next seed each time; see
    :mod:`kelpseg.train.health`); its row then shows the last run.

    ``progress`` shows Lightning's progress bars in sequential mode (parallel folds run quietly).
    Nothing is printed here: ``result.rows()`` is the table ``kelpseg train-all-folds`` prints.
    """
    if max_retries < 0:
        raise KelpsegError(f"max_retries must be >= 0, got {max_retries}")
    if retry_not_learning < 0:
        raise KelpsegError(f"retry_not_learning must be >= 0, got {retry_not_learning}")
    folds = [int(f) for f in folds]
    _check_folds(config, folds, layout)
    configs = fold_configs(config, folds)
    if config.mlflow:  # create the store and experiment once, before workers race to do it
        uri = _tracking_uri(configs[0])
        tracking.prepare_experiment(
            uri, config.experiment, tracking.artifact_location(configs[0].output_dir, uri)
        )
    outcomes = [
        FoldOutcome(c.fold, str(c.run_name), str(Path(c.output_dir) / str(c.run_name)), "pending")
        for c in configs
    ]
    started = time.perf_counter()
    if parallel:
        _train_parallel(
            configs,
            outcomes,
            ray_address,
            cpus_per_fold,
            gpus_per_fold,
            max_retries,
            layout,
            retry_not_learning,
        )
    else:
        _train_sequential(configs, outcomes, max_retries, layout, progress, retry_not_learning)
    return FoldsResult(outcomes, parallel, round(time.perf_counter() - started, 2))


def _tracking_uri(config: TrainConfig) -> str:
    from kelpseg.train.run import resolve_tracking_uri

    return resolve_tracking_uri(config)


def _train_sequential(
    configs: list[TrainConfig],
    outcomes: list[FoldOutcome],
    max_retries: int,
    layout: DataLayout | None,
    progress: bool,
    retry_not_learning: int = 0,
) -> None:
    for config, outcome in zip(configs, outcomes, strict=True):
        seconds = 0.0
        while True:
            outcome.attempts += 1
            t0 = time.perf_counter()
            try:
                result = _run_fold(
                    config.to_dict(), layout, {}, False, progress, retry_not_learning=retry_not_learning
                )
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                seconds += time.perf_counter() - t0
                if _is_user_error(exc) or outcome.attempts > max_retries:
                    _fail(outcome, exc)
                    break
                log.warning(
                    "fold %d attempt %d failed (%s); retrying", config.fold, outcome.attempts, _one_line(exc)
                )
                continue
            seconds += result["seconds"]
            _fill(outcome, result)
            break
        outcome.seconds = round(seconds, 2)


def _train_parallel(
    configs: list[TrainConfig],
    outcomes: list[FoldOutcome],
    ray_address: str | None,
    cpus_per_fold: float,
    gpus_per_fold: float,
    max_retries: int,
    layout: DataLayout | None,
    retry_not_learning: int = 0,
) -> None:
    if gpus_per_fold > 1:
        raise KelpsegError(
            f"gpus_per_fold={gpus_per_fold}: a fold task trains on at most one GPU; to train one model on "
            "several GPUs run the folds sequentially with devices=N"
        )
    for config in configs:
        if config.num_nodes > 1 or (isinstance(config.devices, int) and config.devices > 1):
            raise KelpsegError(
                "parallel folds train on one device each; set devices=1 (or auto) and num_nodes=1"
            )
    init_ray(ray_address)
    import ray

    task = ray.remote(_run_fold).options(
        num_cpus=cpus_per_fold, num_gpus=gpus_per_fold, max_retries=0, retry_exceptions=False
    )
    env = forwarded_env()
    pending: dict[Any, tuple[int, float]] = {}

    def submit(i: int) -> None:
        outcomes[i].attempts += 1
        ref = task.remote(configs[i].to_dict(), layout, env, True, False, retry_not_learning)
        pending[ref] = (i, time.perf_counter())

    for i in range(len(configs)):
        submit(i)
    seconds = [0.0] * len(configs)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        i, t0 = pending.pop(ref)
        seconds[i] += time.perf_counter() - t0
        outcome = outcomes[i]
        try:
            result = ray.get(ref)
        except Exception as exc:  # RayTaskError (the fold raised) or a dead worker / node
            if _is_user_error(exc) or outcome.attempts > max_retries:
                _fail(outcome, exc)
                outcome.seconds = round(seconds[i], 2)
            else:
                log.warning(
                    "fold %d attempt %d failed (%s); retrying", outcome.fold, outcome.attempts, _one_line(exc)
                )
                submit(i)
            continue
        _fill(outcome, result)
        outcome.seconds = round(seconds[i], 2)
