"""Hyper-parameter sweeps on Ray Tune over any TrainConfig option.

``run_sweep(space, base)`` reads a sweep space (:mod:`kelpseg.distributed.space`), checks every
option and value against ``TrainConfig`` before Ray starts, then runs one Tune trial per sampled
configuration. A trial is an ordinary training run (``kelpseg.train.run.train``) whose run
directory lives under the sweep's folder; a Lightning callback reports the validation scores
(``val/dice`` = competition Dice, and the other ``val/*``) to Tune after every epoch, with a
checkpoint, so that the ASHA scheduler can stop lagging trials early and a crashed trial restarts
from its last epoch (``max_failures``). A failing trial never stops the sweep.

Folders (``storage_path`` defaults to ``<base output_dir>/sweeps``)::

    <storage_path>/<name>/           Tune's experiment state (what ``resume=True`` restores)
        sweep.json                   space, options, MLflow parent run id
        trials.csv, trials.parquet   the trials ranked by the objective, failures marked
        runs/<name>-<trial id>/      each trial's run directory (config, checkpoints, metrics)
        trial-<trial id>/            Tune's per-trial results and checkpoints

``storage_path`` may be a URI (``s3://bucket/sweeps``, ``gs://…``): Tune then keeps its state
there, the trial run directories are written on each worker's local disk under
``<base output_dir>/sweeps/<name>/runs`` and each epoch's checkpoint carries the run directory's
small files and checkpoints, so a trial restarted on another node resumes from it.

MLflow: one parent run per sweep (tags ``kelpseg.sweep``), one nested run per trial
(``mlflow.parentRunId``) holding the trial's full config as params, its per-epoch metrics, and
``best_val_dice`` / ``final_val_dice``; failed trials are marked FAILED with their error, trials
stopped by ASHA KILLED. The tracking URI is ``$MLFLOW_TRACKING_URI``, else the base config's
``mlflow_tracking_uri``, else ``sqlite:///<base output_dir>/mlflow.db``.

If the driver dies, run the same command with ``resume=True`` (and the same ``name``): finished
trials are kept, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd

from kelpseg import tracking
from kelpseg.distributed.ray_runtime import absolute_config, apply_env, forwarded_env, init_ray
from kelpseg.distributed.runner import AfterCheckpointCallback, fault_callbacks, read_summary, train_or_resume
from kelpseg.distributed.space import (
    SweepRunOptions,
    SweepSpace,
    SweepSpaceError,
    check_option_names,
    check_run_options,
    load_space,
    validate_space,
)
from kelpseg.errors import KelpsegError
from kelpseg.io.atomic import write_json, write_parquet, write_text
from kelpseg.layout import RUN_NAME_CHARS, RunLayout, is_valid_run_name
from kelpseg.train.config import TrainConfig, load_config, parse_overrides

log = logging.getLogger(__name__)

DEFAULT_RUN_OPTIONS: dict[str, Any] = SweepRunOptions().model_dump()
SWEEP_FILE = "sweep.json"
POINTER_FILE = "run.json"


@dataclass
class SweepResult:
    """A finished (or resumed and finished) sweep."""

    name: str
    path: str  # Tune experiment path (local folder or URI)
    sweep_dir: Path  # our tables and the trial run directories
    metric: str
    mode: str
    table: pd.DataFrame  # one row per trial, best first
    tracking_uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None
    wall_time_s: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best trial's row (``None`` when no trial reported the metric)."""
        if self.table.empty:
            return None
        scored = self.table[self.table["best_score"].notna()]
        return None if scored.empty else scored.iloc[0].to_dict()

    def rows(self) -> list[dict[str, Any]]:
        return self.table.where(self.table.notna(), None).to_dict("records")

    def ranked_rows(self) -> list[dict[str, str]]:
        """The trials best first, as short strings: rank, trial, status (with its error), score,
        epochs and the searched values (what ``kelpseg sweep`` prints)."""
        params = [c for c in self.table.columns if c.startswith("param.")]
        out = []
        for row in self.table.to_dict("records"):
            error = row["error"] if len(row["error"]) <= 80 else row["error"][:77] + "..."
            out.append(
                {
                    "rank": "" if pd.isna(row["rank"]) else str(int(row["rank"])),
                    "trial": row["trial_id"],
                    "status": row["status"] + (f": {error}" if error else ""),
                    self.metric: "" if not _present(row["best_score"]) else f"{row['best_score']:.4f}",
                    "epochs": str(row["epochs"]),
                    **{p.removeprefix("param."): _short(row[p]) for p in params},
                }
            )
        return out


@dataclass(frozen=True)
class _TrialSetup:
    """Everything a trial needs, shipped to the workers once (``tune.with_parameters``)."""

    sweep_name: str
    base: dict[str, Any]
    space: SweepSpace
    runs_root: str
    copy_checkpoint: bool
    env: dict[str, str]
    parent_run_id: str | None
    metric: str
    mode: str


# ---- the trial --------------------------------------------------------------------------------------
class TuneReportCallback(AfterCheckpointCallback):
    """After each epoch (its checkpoint written), report the validation scores to Tune.

    The checkpoint sent along is ``run.json`` (run directory and epoch) and, when the sweep's
    storage is not a shared path, the run directory's small files and checkpoints.
    """

    def __init__(self, run_dir: Path, setup: _TrialSetup, trial_id: str) -> None:
        self.run_dir = Path(run_dir)
        self.setup = setup
        self.trial_id = trial_id
        self.best: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = trainer.logger
        if self.setup.parent_run_id is None or not trainer.is_global_zero or logger is None:
            return
        run_id = getattr(logger, "run_id", None)
        if run_id is None:
            return
        mlflow_client = logger.experiment
        mlflow_client.set_tag(run_id, tracking.PARENT_TAG, self.setup.parent_run_id)
        mlflow_client.set_tag(run_id, "kelpseg.sweep", self.setup.sweep_name)
        mlflow_client.set_tag(run_id, "kelpseg.trial_id", self.trial_id)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        from ray import tune

        metrics = _epoch_metrics(trainer, pl_module)
        score = metrics.get(self.setup.metric)
        if score is not None and not math.isnan(score):
            better = self.best is None or (
                score > self.best if self.setup.mode == "max" else score < self.best
            )
            self.best = score if better else self.best
        metrics["best_score"] = self.best if self.best is not None else float("nan")
        with tempfile.TemporaryDirectory(prefix="kelpseg-ckpt-") as tmp:
            _fill_checkpoint(Path(tmp), self.run_dir, trainer.current_epoch, self.setup.copy_checkpoint)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _epoch_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
    from kelpseg.distributed.space import REPORTED_METRICS

    metrics: dict[str, float] = {"epoch": trainer.current_epoch, "epochs_done": trainer.current_epoch + 1}
    logged = trainer.callback_metrics
    for name in REPORTED_METRICS:
        if name in logged:
            metrics[name] = float(logged[name])
    train_loss = pl_module.train_loss_epoch() if hasattr(pl_module, "train_loss_epoch") else None
    if train_loss is not None:
        metrics["train/loss"] = float(train_loss)
    return metrics


def _fill_checkpoint(target: Path, run_dir: Path, epoch: int, copy: bool) -> None:
    write_json(target / POINTER_FILE, {"run_dir": str(run_dir), "epoch": epoch})
    if not copy:
        return
    source, copy_to = RunLayout(run_dir), RunLayout(target)
    for name in RunLayout.SMALL_FILES:  # the run's small files travel when storage is not shared
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    copy_to.checkpoints.mkdir()
    for ckpt in RunLayout.CHECKPOINT_NAMES:
        if source.checkpoint(ckpt).is_file():
            shutil.copy2(source.checkpoint(ckpt), copy_to.checkpoint(ckpt))


def _restore_from_checkpoint(run_dir: Path) -> None:
    """Rebuild the run directory from Tune's checkpoint when it is missing here (another node)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None or RunLayout(run_dir).last_checkpoint.is_file():
        return
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        if not RunLayout(folder).last_checkpoint.is_file():
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        for item in folder.iterdir():
            if item.name == POINTER_FILE:
                continue
            dest = run_dir / item.name
            if item.is_dir():
                shutil.copytree(item, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(item, dest)


def _sweep_trial(drawn: dict[str, Any], setup: _TrialSetup) -> None:
    """The Tune trainable: one training run of the drawn options, resumed when restarted."""
    from ray import tune

    apply_env(setup.env)
    trial_id = tune.get_context().get_trial_id()
    run_name = f"{setup.sweep_name}-{trial_id}"
    options = {**setup.base, **setup.space.assign(drawn), "run_name": run_name, "output_dir": setup.runs_root}
    config = TrainConfig.from_dict(options, source=f"sweep trial {trial_id}")
    run_dir = Path(setup.runs_root) / run_name
    if setup.copy_checkpoint:
        _restore_from_checkpoint(run_dir)
    callbacks = [TuneReportCallback(run_dir, setup, trial_id), *fault_callbacks(run_name, hard=True)]
    train_or_resume(config, progress=False, callbacks=callbacks)


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


# ---- the driver ---------------------------------------------------------------------------------------
def _base_config(space: SweepSpace, base: str | Path | TrainConfig | None) -> TrainConfig:
    if isinstance(base, TrainConfig):
        return base
    path = base if base is not None else space.base
    if path is None:
        raise SweepSpaceError(f"{space.source}: no base config; add `base: <config.yaml>` or pass one")
    return load_config(path)


def _with_overrides(space: SweepSpace, overrides: Sequence[str]) -> SweepSpace:
    """The space with ``key=value`` overrides added to its fixed options (they win over the file's)."""
    extra = parse_overrides(list(overrides))
    searched = sorted(set(extra) & set(space.option_names()))
    if searched:
        raise SweepSpaceError(f"{space.source}: cannot override {searched}: the space searches them")
    return replace(space, fixed={**space.fixed, **extra})


#: Options that decide which data files and channels a trial reads (checked in the driver).
DATA_OPTIONS = (
    "data_dir",
    "split_path",
    "band_stats_path",
    "bands",
    "spectral_indices",
    "fill_missing_pixels_with_nan",
    "mask_using_qa",
    "mask_using_water_mask",
    "normalization_strategy",
)


def preflight_data(space: SweepSpace, base: TrainConfig) -> None:
    """Open the split table, catalog and band stats as the trials will, before Ray starts.

    Done for the base config and for every listed value of a data option (``spectral_indices``
    subsets missing from the band stats, a wrong ``data_dir``, ...), so that a sweep whose every
    trial would fail on its inputs stops at once with the reason.
    """
    from kelpseg.train.datamodule import KelpDataModule

    checks = [("base config", {})]
    for param in space.params:
        if set(param.names) & set(DATA_OPTIONS) and param.discrete:
            checks += [(f"params.{param.key}={value!r}", param.assign(value)) for value in param.args]
    seen: set[str] = set()
    for where, options in checks:
        config = TrainConfig.from_dict({**base.to_dict(), **options}, source=where)
        key = json.dumps({k: getattr(config, k) for k in DATA_OPTIONS}, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            KelpDataModule(config)
        except KelpsegError as exc:
            raise SweepSpaceError(f"{space.source}: {where}: {exc}") from None


def _run_options(space: SweepSpace, given: dict[str, Any]) -> dict[str, Any]:
    options = check_run_options(
        space, {**space.run_options, **{k: v for k, v in given.items() if v is not None}}
    ).model_dump()
    if options["gpus_per_trial"] > 1:
        raise SweepSpaceError(
            f"gpus_per_trial={options['gpus_per_trial']}: a trial trains on at most one GPU "
            "(fractions share one); train a single model on several GPUs with `kelpseg train --set devices=N`"
        )
    return options


def _check_devices(base: TrainConfig) -> None:
    if base.num_nodes > 1 or (isinstance(base.devices, int) and base.devices > 1):
        raise SweepSpaceError(
            "sweep trials train on one device each; set devices=1 (or auto) and num_nodes=1"
        )


def _is_uri(path: str) -> bool:
    return "://" in path


def _latest_sweep(storage: str, prefix: str) -> str | None:
    if _is_uri(storage) or not Path(storage).is_dir():
        return None
    found = sorted(
        (p for p in Path(storage).iterdir() if p.is_dir() and p.name.startswith(f"{prefix}-")),
        key=lambda p: p.stat().st_mtime,
    )
    return found[-1].name if found else None


def _tracking_uri(base: TrainConfig) -> str:
    from kelpseg.train.run import resolve_tracking_uri

    return resolve_tracking_uri(base)


def _start_parent_run(
    uri: str, experiment: str, base: TrainConfig, name: str, space: SweepSpace, options: dict[str, Any]
) -> str:
    exp_id = tracking.prepare_experiment(uri, experiment, tracking.artifact_location(base.output_dir, uri))
    mlflow_client = tracking.client(uri)
    run = mlflow_client.create_run(
        exp_id, run_name=name, tags={"kelpseg.sweep": name, "kelpseg.role": "sweep"}
    )
    run_id = run.info.run_id
    params = {f"sweep.{k}": v for k, v in options.items()}
    params.update({f"space.{p.key}": f"{p.kind}{list(p.args)}" for p in space.params})
    params.update({f"fixed.{k}": v for k, v in space.fixed.items()})
    params.update({"sweep.metric": space.metric, "sweep.mode": space.mode, "sweep.space": space.source})
    for key, value in tracking.flat_params(params).items():
        mlflow_client.log_param(run_id, key, value)
    if space.path is not None:
        mlflow_client.log_artifact(run_id, str(space.path))
    return run_id


def run_sweep(
    space_path: str | Path,
    base_config: str | Path | TrainConfig | None = None,
    *,
    num_samples: int | None = None,
    search: str | None = None,
    scheduler: str | None = None,
    max_concurrent_trials: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_failures: int | None = None,
    trial_timeout_s: float | None = None,
    time_budget_s: float | None = None,
    ray_address: str | None = None,
    storage_path: str | Path | None = None,
    name: str | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> SweepResult:
    """Run (or resume) the sweep described by ``space_path`` (see the module docstring).

    ``base_config`` (a YAML path or a TrainConfig; default: the space's ``base``) is what every
    trial starts from, with the space's ``fixed`` options and then ``overrides`` (``key=value``)
    on top; the searched options come last.
    Run options left at ``None`` come from the space file, then from :data:`DEFAULT_RUN_OPTIONS`.
    ``trial_timeout_s`` stops a trial at the first epoch end past it (status ``stopped``);
    ``time_budget_s`` stops the whole sweep. ``progress`` shows Tune's trial status while it runs;
    the ranked table is ``result.table`` (``result.ranked_rows()`` as printed by ``kelpseg sweep``).
    ``name`` defaults to ``<space name>-<UTC timestamp>``; with ``resume=True`` and no name, the
    newest sweep of this space under ``storage_path`` is resumed.
    """
    space = load_space(space_path)
    options = _run_options(
        space,
        {
            "num_samples": num_samples,
            "search": search,
            "scheduler": scheduler,
            "max_concurrent_trials": max_concurrent_trials,
            "cpus_per_trial": cpus_per_trial,
            "gpus_per_trial": gpus_per_trial,
            "max_failures": max_failures,
            "trial_timeout_s": trial_timeout_s,
            "time_budget_s": time_budget_s,
        },
    )
    space = _with_overrides(space, overrides)
    check_option_names(space)
    # The trials' starting point: base, fixed options and overrides, with absolute paths.
    start = {**_base_config(space, base_config).to_dict(), **space.fixed}
    base = absolute_config(
        TrainConfig.from_dict(start, source=f"{space.source}: base config with fixed options")
    )
    _check_devices(base)
    validate_space(space, base.to_dict())
    preflight_data(space, base)
    if options["search"] == "grid":
        space.tune_space("grid")  # numeric ranges cannot be gridded: fail now, not in Tune

    storage = str(storage_path) if storage_path is not None else str(Path(base.output_dir) / "sweeps")
    if not _is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    if name is None and resume:
        name = _latest_sweep(storage, space.name)
        if name is None:
            raise KelpsegError(f"{storage}: no earlier sweep of {space.name!r} to resume; pass its name")
    name = name or f"{space.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    if not is_valid_run_name(name):
        raise KelpsegError(f"sweep name {name!r} may only hold {RUN_NAME_CHARS}")
    experiment_path = f"{storage.rstrip('/')}/{name}"
    sweep_dir = Path(base.output_dir) / "sweeps" / name if _is_uri(storage) else Path(experiment_path)
    return _run(
        space, base, options, name, storage, experiment_path, sweep_dir, resume, ray_address, progress
    )


def _run(
    space: SweepSpace,
    base: TrainConfig,
    options: dict[str, Any],
    name: str,
    storage: str,
    experiment_path: str,
    sweep_dir: Path,
    resume: bool,
    ray_address: str | None,
    progress: bool,
) -> SweepResult:
    started = time.perf_counter()
    meta_path = sweep_dir / SWEEP_FILE
    init_ray(ray_address)
    # The forced state snapshot after each checkpoint is what makes a resume exact; don't warn about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune

    can_restore = tune.Tuner.can_restore(experiment_path)
    if resume and not can_restore:
        raise KelpsegError(
            f"{experiment_path}: no sweep state to resume (was the sweep started with this name?)"
        )
    if not resume and (can_restore or (sweep_dir.exists() and any(sweep_dir.iterdir()))):
        raise KelpsegError(
            f"{experiment_path}: a sweep of this name exists; resume it or choose another name"
        )

    experiment = space.experiment or base.experiment
    uri = _tracking_uri(base) if base.mlflow else None
    meta = json.loads(meta_path.read_text()) if resume and meta_path.is_file() else {}
    parent_run_id = meta.get("parent_run_id")
    if uri is not None and parent_run_id is None:
        parent_run_id = _start_parent_run(uri, experiment, base, name, space, options)
    elif uri is not None:
        tracking.client(uri).update_run(parent_run_id, status="RUNNING")
    write_json(
        meta_path,
        {
            "name": name,
            "space": space.source,
            "experiment_path": experiment_path,
            "options": options,
            "metric": space.metric,
            "mode": space.mode,
            "tracking_uri": uri,
            "experiment": experiment,
            "parent_run_id": parent_run_id,
            "base_config": base.to_dict(),
        },
    )

    base_options = {**base.to_dict(), "experiment": experiment}
    if uri is not None and "MLFLOW_TRACKING_URI" not in os.environ:
        base_options["mlflow_tracking_uri"] = uri  # the driver's store, not one per runs folder
    setup = _TrialSetup(
        sweep_name=name,
        base=base_options,
        space=space,
        runs_root=str(sweep_dir / "runs"),
        copy_checkpoint=_is_uri(storage),
        env=forwarded_env(),
        parent_run_id=parent_run_id,
        metric=space.metric,
        mode=space.mode,
    )
    epochs = int(base_options["epochs"])
    trainable = tune.with_resources(
        tune.with_parameters(_sweep_trial, setup=setup),
        {"cpu": options["cpus_per_trial"], "gpu": options["gpus_per_trial"]},
    )
    if resume:
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space.tune_space(options["search"]),
            tune_config=tune.TuneConfig(
                metric=space.metric,
                mode=space.mode,
                scheduler=_scheduler(options["scheduler"], space, epochs),
                num_samples=options["num_samples"],
                max_concurrent_trials=options["max_concurrent_trials"],
                time_budget_s=options["time_budget_s"],
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=options["max_failures"]),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                stop={"time_total_s": options["trial_timeout_s"]} if options["trial_timeout_s"] else None,
                verbose=1 if progress else 0,
            ),
        )
    grid = tuner.fit()
    table = _results_table(grid, space, setup, epochs)
    write_parquet(sweep_dir / "trials.parquet", table)
    write_text(sweep_dir / "trials.csv", table.to_csv(index=False))
    if uri is not None and parent_run_id is not None:
        _log_results(uri, experiment, parent_run_id, table, space, setup, sweep_dir)
    result = SweepResult(
        name=name,
        path=experiment_path,
        sweep_dir=sweep_dir,
        metric=space.metric,
        mode=space.mode,
        table=table,
        tracking_uri=uri,
        experiment=experiment,
        parent_run_id=parent_run_id,
        wall_time_s=round(time.perf_counter() - started, 2),
        options=options,
    )
    return result


def _scheduler(kind: str, space: SweepSpace, epochs: int) -> Any:
    if kind == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epochs_done",
        max_t=epochs,
        grace_period=int(space.asha.get("grace_period", 1)),
        reduction_factor=float(space.asha.get("reduction_factor", 2)),
        brackets=int(space.asha.get("brackets", 1)),
    )


# ---- results --------------------------------------------------------------------------------------------
def _error_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    cause = getattr(error, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Ray prints the worker's traceback first; the exception line comes last.
    picked = next(
        (line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Crash)\b", line)), None
    )
    return (picked or (lines[-1] if lines else type(error).__name__))[:300]


def _param_value(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, list | tuple) else value


def _history(result: Any) -> pd.DataFrame:
    try:
        frame = result.metrics_dataframe
    except Exception:
        frame = None
    return frame if isinstance(frame, pd.DataFrame) else pd.DataFrame()


def _results_table(grid: Any, space: SweepSpace, setup: _TrialSetup, epochs: int) -> pd.DataFrame:
    rows = []
    for result in grid:
        trial_id = Path(str(result.path)).name.removeprefix("trial-")
        metrics = dict(result.metrics or {})
        history = _history(result)
        run_dir = Path(setup.runs_root) / f"{setup.sweep_name}-{trial_id}"
        summary = read_summary(run_dir)
        done = int(metrics.get("epochs_done", summary.get("epochs_done") or 0) or 0)
        if result.error is not None:
            status = "failed"
        elif summary.get("status") == "finished" or done >= epochs:
            status = "finished"
        else:
            status = "stopped"  # by the scheduler (ASHA)
        scores = history[space.metric].dropna() if space.metric in history else pd.Series(dtype=float)
        dice = history["val/dice"].dropna() if "val/dice" in history else pd.Series(dtype=float)
        best = (scores.max() if space.mode == "max" else scores.min()) if len(scores) else None
        row: dict[str, Any] = {
            "trial_id": trial_id,
            "status": status,
            "best_score": best,
            "best_val_dice": float(dice.max()) if len(dice) else None,
            "final_val_dice": float(dice.iloc[-1]) if len(dice) else None,
            "epochs": done,
            "seconds": round(float(metrics.get("time_total_s", 0.0) or 0.0), 2),
            "error": _error_line(result.error),
            "run_dir": str(run_dir),
        }
        drawn = space.assign(result.config or {})
        row.update({f"param.{k}": _param_value(drawn.get(k)) for k in space.option_names()})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values("best_score", ascending=space.mode == "min", na_position="last", kind="stable")
    ranks = [i + 1 if _present(score) else None for i, score in enumerate(table["best_score"])]
    table.insert(0, "rank", pd.array(ranks, dtype="Int64"))
    return table.reset_index(drop=True)


def _log_results(
    uri: str,
    experiment: str,
    parent_run_id: str,
    table: pd.DataFrame,
    space: SweepSpace,
    setup: _TrialSetup,
    sweep_dir: Path,
) -> None:
    mlflow_client = tracking.client(uri)
    exp_id = mlflow_client.get_experiment_by_name(experiment).experiment_id
    for row in table.to_dict("records"):
        run_id = _trial_run_id(Path(row["run_dir"]))
        if run_id is None:  # died before training started: record the trial anyway
            run = mlflow_client.create_run(exp_id, run_name=f"{setup.sweep_name}-{row['trial_id']}")
            run_id = run.info.run_id
            params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}
            for key, value in tracking.flat_params(params).items():
                mlflow_client.log_param(run_id, key, value)
        mlflow_client.set_tag(run_id, tracking.PARENT_TAG, parent_run_id)
        mlflow_client.set_tag(run_id, "kelpseg.sweep", setup.sweep_name)
        mlflow_client.set_tag(run_id, "kelpseg.trial_id", row["trial_id"])
        mlflow_client.set_tag(run_id, "kelpseg.trial_status", row["status"])
        if row["error"]:
            mlflow_client.set_tag(run_id, "kelpseg.error", row["error"])
        for key in ("best_val_dice", "final_val_dice"):
            if _present(row.get(key)):
                mlflow_client.log_metric(run_id, key, float(row[key]))
        wanted = {"failed": "FAILED", "stopped": "KILLED"}.get(row["status"], "FINISHED")
        if tracking.run_status(uri, run_id) != wanted:
            mlflow_client.set_terminated(run_id, wanted)
    scored = table[table["best_score"].notna()]
    if not scored.empty:
        best = scored.iloc[0]
        mlflow_client.log_metric(
            parent_run_id, f"best_{space.metric.replace('/', '_')}", float(best["best_score"])
        )
        if _present(best["best_val_dice"]):
            mlflow_client.log_metric(parent_run_id, "best_val_dice", float(best["best_val_dice"]))
        mlflow_client.set_tag(parent_run_id, "kelpseg.best_trial", str(best["trial_id"]))
    mlflow_client.log_metric(parent_run_id, "trials_failed", float((table["status"] == "failed").sum()))
    mlflow_client.log_artifact(parent_run_id, str(sweep_dir / "trials.csv"))
    status = "FAILED" if (table["status"] == "failed").all() else "FINISHED"
    mlflow_client.set_terminated(parent_run_id, status)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _trial_run_id(run_dir: Path) -> str | None:
    path = run_dir / "mlflow.json"
    try:
        return json.loads(path.read_text()).get("run_id") if path.is_file() else None
    except (OSError, ValueError):
        return None


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
