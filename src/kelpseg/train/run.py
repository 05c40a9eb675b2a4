"""Training runs: run directories, MLflow tracking, resuming, and loading a run for inference.

``train(config)`` writes ``<output_dir>/<run_name>/`` as :class:`kelpseg.layout.RunLayout`
describes: the resolved config, a copy of the band statistics, the split, the MLflow run id,
``best`` (by ``monitor_metric``; val/dice is the competition metric) and ``last`` checkpoints
(written every epoch, atomically), one metrics row per epoch (losses, val scores, lr, seconds,
train samples/s), previews and a summary (best score and epoch, wall time, throughput, status).

A checkpoint holds the model, the batch transform and the config, so ``load_run`` needs nothing
else. ``resume(run_dir)`` continues from ``last.ckpt`` (epoch count, optimizer, scheduler,
callbacks) and, when possible, the same MLflow run; a killed process loses only its partial epoch.

MLflow: the tracking URI is ``$MLFLOW_TRACKING_URI``, else ``config.mlflow_tracking_uri``, else
``sqlite:///<output_dir>/mlflow.db`` (the first run creates the database, ~10 s). MLflow 3 refuses
a plain file store (``./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set. Logged: the config
as params, the provenance (``provenance.json``: kelpseg version, git commit, lock hash, library
versions) as ``provenance.*`` tags, every metric, and at the end the previews and the small run
files as artifacts; the best checkpoint too with ``mlflow_log_checkpoint: true`` (off by default:
it is already in the run directory, whose path is the ``run_dir`` tag, and copying it costs tens
of MB per run). ``mlflow: false`` turns tracking off.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import pickle
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from kelpseg import provenance, tracking
from kelpseg.errors import Interrupted, KelpsegError, WriteError
from kelpseg.io.atomic import atomic_path, write_json
from kelpseg.layout import DataLayout, RunLayout, detect_run_format
from kelpseg.progress import is_terminal, verbose
from kelpseg.train.config import TrainConfig
from kelpseg.train.health import LearningCheck, learning_check, learning_report
from kelpseg.train.module import KelpSegmentationModule
from kelpseg.train.transforms import BatchTransform

log = logging.getLogger(__name__)

METRICS_COLUMNS = (
    "epoch",
    "train/loss",
    "val/loss",
    "val/dice",
    "val/iou",
    "val/precision",
    "val/recall",
    "val/macro_dice",
    "lr",
    "seconds",
    "train_samples_per_s",
)


#: Set while ``fit`` runs, so that DDP worker processes (which re-run the command) join the same run.
RUN_DIR_ENV = "KELPSEG_RUN_DIR"


def _rank() -> int:
    """Global rank of this process as the launcher's environment says (0 without DDP)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


class RunDirError(KelpsegError):
    """A run directory is missing, incomplete, or would be overwritten."""


# ---- small helpers ------------------------------------------------------------------------------
def default_run_name(config: TrainConfig, now: datetime | None = None) -> str:
    """``<arch>-<encoder>-fold<k>-<UTC timestamp>``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    encoder = config.encoder.replace("/", "_")
    return f"{config.architecture}-{encoder}-fold{config.fold}-{stamp}"


def resolve_tracking_uri(config: TrainConfig) -> str:
    """``$MLFLOW_TRACKING_URI`` > ``config.mlflow_tracking_uri`` > ``sqlite:///<output_dir>/mlflow.db``."""
    return tracking.resolve_uri(config.mlflow_tracking_uri, config.output_dir)


def _on_cpu(config: TrainConfig) -> bool:
    if config.accelerator == "cpu":
        return True
    return config.accelerator == "auto" and not torch.cuda.is_available()


def resolve_precision(config: TrainConfig) -> str:
    """Lightning precision; ``16-mixed`` is GPU-only: on a CPU it becomes ``bf16-mixed`` (with a warning)."""
    if config.precision == "16-mixed" and _on_cpu(config):
        warnings.warn("precision 16-mixed needs a GPU; using bf16-mixed on the CPU", stacklevel=2)
        return "bf16-mixed"
    return config.precision


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never leaves half a ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            try:
                super().save_checkpoint(checkpoint, tmp, storage_options)
            except RuntimeError as exc:  # torch's zip writer reports a full disk as RuntimeError
                if "write" not in str(exc).lower():
                    raise
                free = shutil.disk_usage(Path(path).parent).free
                raise WriteError(
                    f"cannot write {path}: the checkpoint write failed ({free / 2**20:.1f} MiB free)"
                ) from None


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    value = float(value)
    return "" if math.isnan(value) else f"{value:.6g}"


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = RunLayout(run_dir).metrics
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(METRICS_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ---- callbacks ----------------------------------------------------------------------------------
class EpochMetricsCallback(Callback):
    """Writes one ``metrics.csv`` row per epoch (rank 0) and tracks training throughput.

    The row is written at the end of validation, before the checkpoints of that epoch, so a
    resumed run may see a row for the epoch it re-runs; ``resume`` drops such rows first.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = [dict(r) for r in read_metrics(self.path.parent)]
        self.train_seconds = 0.0
        self.train_samples = 0
        self._epoch_start = 0.0
        self._train_start = 0.0
        self._epoch_train_seconds = 0.0
        self._epoch_samples = 0
        self._written_epoch = -1

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._train_start = time.perf_counter()
        self._epoch_train_seconds = 0.0
        self._epoch_samples = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        batch = args[1] if len(args) > 1 else None
        if isinstance(batch, dict) and "image" in batch:  # every process trains on as many samples
            self._epoch_samples += int(batch["image"].shape[0]) * trainer.world_size

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._train_start:
            self._epoch_train_seconds += time.perf_counter() - self._train_start
            self._train_start = 0.0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write_row(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._written_epoch != trainer.current_epoch:  # no validation this epoch
            if self._train_start:
                self._epoch_train_seconds += time.perf_counter() - self._train_start
                self._train_start = 0.0
            self._write_row(trainer, pl_module, validated=False)

    def _write_row(self, trainer: pl.Trainer, pl_module: pl.LightningModule, validated: bool = True) -> None:
        """``validated=False``: the val columns stay empty (Lightning keeps the last validation's
        values in ``callback_metrics``; they would read as this epoch's)."""
        epoch = trainer.current_epoch
        self.train_seconds += self._epoch_train_seconds
        self.train_samples += self._epoch_samples
        self._written_epoch = epoch
        metrics = trainer.callback_metrics
        train_loss = pl_module.train_loss_epoch() if hasattr(pl_module, "train_loss_epoch") else None
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        seconds = time.perf_counter() - self._epoch_start
        throughput = (
            self._epoch_samples / self._epoch_train_seconds if self._epoch_train_seconds > 0 else None
        )
        row: dict[str, Any] = {
            "epoch": epoch,
            "train/loss": _fmt(train_loss),
            **{k: _fmt(metrics.get(k) if validated else None) for k in METRICS_COLUMNS[2:8]},
            "lr": _fmt(lr),
            "seconds": f"{seconds:.2f}",
            "train_samples_per_s": _fmt(throughput),
        }
        if not trainer.is_global_zero:
            return
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch] + [row]
        _write_metrics(self.path, self.rows)
        if trainer.logger is not None:
            extra = {
                "train/loss_epoch": train_loss,
                "epoch_seconds": seconds,
                "train_samples_per_s": throughput,
            }
            trainer.logger.log_metrics(
                {k: float(v) for k, v in extra.items() if v is not None}, step=trainer.global_step
            )


# ---- MLflow -------------------------------------------------------------------------------------
def _mlflow_params(config: TrainConfig) -> dict[str, Any]:
    out = {}
    for key, value in config.to_dict().items():
        out[key] = ",".join(str(v) for v in value) if isinstance(value, list) else value
    return out


def _make_mlflow_logger(config: TrainConfig, run_dir: Path, run_id: str | None) -> Any:
    from lightning.pytorch.loggers import MLFlowLogger

    uri = resolve_tracking_uri(config)
    try:
        logger = MLFlowLogger(
            experiment_name=config.experiment,
            run_name=config.run_name,
            tracking_uri=uri,
            artifact_location=tracking.artifact_location(config.output_dir, uri),
            run_id=run_id,
            tags={"run_dir": str(run_dir.resolve()), **provenance.as_tags(_provenance(run_dir))},
        )
        _ = logger.experiment  # connect now, so a bad URI fails before training starts
        new_run_id = logger.run_id
    except Exception as exc:  # MLflow raises many types for a bad store
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = ""
        if "MLFLOW_ALLOW_FILE_STORE" in str(exc):
            hint = (
                " (set MLFLOW_ALLOW_FILE_STORE=true for a plain file store, or use sqlite:///path/mlflow.db)"
            )
        raise KelpsegError(f"MLflow tracking URI {uri}: cannot start a run: {message}{hint}") from None
    if _rank() != 0:
        return logger
    write_json(
        RunLayout(run_dir).mlflow,
        {"tracking_uri": uri, "experiment": config.experiment, "run_id": new_run_id},
    )
    if run_id is None:
        logger.log_hyperparams(_mlflow_params(config))
    return logger


def _log_artifacts(logger: Any, run_dir: Path, best: Path | None, upload_checkpoint: bool) -> None:
    client, run_id = logger.experiment, logger.run_id
    for name in RunLayout.ARTIFACT_FILES:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    previews = RunLayout(run_dir).previews
    if previews.is_dir() and any(previews.iterdir()):
        client.log_artifacts(run_id, str(previews), RunLayout.PREVIEW_DIR)
    if upload_checkpoint and best is not None and best.is_file():
        client.log_artifact(run_id, str(best), RunLayout.CHECKPOINT_DIR)


# ---- the run ------------------------------------------------------------------------------------
class TopKCheckpoint(ModelCheckpoint):
    """The ``save_top_k`` best epochs as ``top-epoch=EEE.ckpt`` (a subclass: its own checkpoint state key)."""


def _callbacks(config: TrainConfig, run_dir: Path, preview_ids: list[str]) -> list[Callback]:
    from kelpseg.train.previews import PreviewCallback

    files = RunLayout(run_dir)
    best = ModelCheckpoint(
        dirpath=files.checkpoints,
        filename="best",
        monitor=config.monitor_metric,
        mode=config.monitor_mode,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # Not ``save_last=True`` on the monitored callback: Lightning then writes last.ckpt only in
    # epochs that improved the monitored metric. A second, unmonitored callback keeping the
    # newest checkpoint writes it after every epoch.
    last = ModelCheckpoint(
        dirpath=files.checkpoints,
        filename="last",
        monitor=None,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [
        EpochMetricsCallback(files.metrics),
        learning_check(config),
        PreviewCallback(files.previews, preview_ids, config.preview_every_n_epochs),
        best,
        last,
    ]
    if config.save_top_k > 1:
        callbacks.append(
            TopKCheckpoint(
                dirpath=files.checkpoints,
                filename="top-epoch={epoch:03d}",
                monitor=config.monitor_metric,
                mode=config.monitor_mode,
                save_top_k=config.save_top_k,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    if config.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(
                monitor=config.monitor_metric,
                mode=config.monitor_mode,
                patience=config.early_stopping_patience,
            )
        )
    if config.swa:
        start = config.swa_epoch_start
        callbacks.append(
            StochasticWeightAveraging(
                swa_lrs=config.swa_lr,
                swa_epoch_start=int(start) if start >= 1 else start,  # >= 1: an epoch number
                annealing_epochs=config.swa_annealing_epochs,
            )
        )
    return callbacks


class EpochLines(Callback):
    """One plain line per epoch (``epoch 3/10  train/loss 0.312  val/dice 0.512  12.3 s``) for logs.

    Used instead of a progress bar when stdout is not a terminal: a bar there is escape codes.
    """

    KEYS = ("train/loss", "val/loss", "val/dice", "val/iou")

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self._started = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key in self.KEYS:
            value = metrics.get(key)
            if value is not None and getattr(value, "numel", lambda: 1)() == 1:
                parts.append(f"{key} {float(value):.4f}")
        parts.append(f"{time.perf_counter() - self._started:.1f} s")
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)


def _progress_callbacks(progress: bool) -> list[Callback]:
    """A live bar on a terminal (``v_num`` only with ``-v``), else one line per epoch."""
    if not progress:
        return []
    if not is_terminal(sys.stdout):
        return [EpochLines()]
    from lightning.pytorch.callbacks import RichProgressBar

    class _Bar(RichProgressBar):
        def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
            items = super().get_metrics(trainer, pl_module)
            if not verbose():
                items.pop("v_num", None)
            return items

    return [_Bar()]


def _make_trainer(
    config: TrainConfig, run_dir: Path, callbacks: list[Callback], logger: Any, progress: bool
) -> pl.Trainer:
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("medium")
    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=config.epochs,
        precision=resolve_precision(config),  # type: ignore[arg-type]
        accumulate_grad_batches=config.accumulate_grad_batches,
        limit_train_batches=config.limit_train_batches,
        limit_val_batches=config.limit_val_batches,
        check_val_every_n_epoch=config.val_every_n_epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        deterministic=config.deterministic,
        log_every_n_steps=config.log_every_n_steps,
        callbacks=[*callbacks, *_progress_callbacks(progress)],
        logger=logger if logger is not None else False,
        enable_progress_bar=progress and is_terminal(sys.stdout),
        enable_model_summary=progress and verbose(),
        num_sanity_val_steps=1,
        plugins=[AtomicCheckpointIO()],
    )


def _summary(
    run_dir: Path, config: TrainConfig, trainer: pl.Trainer | None, status: str, **extra: Any
) -> dict:
    rows = read_metrics(run_dir)
    key = config.monitor_metric
    scored = [r for r in rows if r.get(key)]
    best_row = None
    if scored:
        pick = max if config.monitor_mode == "max" else min
        best_row = pick(scored, key=lambda r: float(r[key]))
    metrics_cb = next(
        (c for c in (trainer.callbacks if trainer else []) if isinstance(c, EpochMetricsCallback)), None
    )
    check = next((c for c in (trainer.callbacks if trainer else []) if isinstance(c, LearningCheck)), None)
    samples = metrics_cb.train_samples if metrics_cb else 0
    seconds = metrics_cb.train_seconds if metrics_cb else 0.0
    summary = {
        "status": status,
        "run_name": config.run_name,
        "monitor_metric": key,
        "best_score": float(best_row[key]) if best_row else None,
        "best_epoch": int(best_row["epoch"]) if best_row else None,
        "best_val_dice": float(best_row["val/dice"]) if best_row and best_row.get("val/dice") else None,
        "epochs_done": len(rows),
        "epochs_planned": config.epochs,
        "total_epoch_seconds": round(sum(float(r["seconds"]) for r in rows if r.get("seconds")), 2),
        "train_samples_per_s": round(samples / seconds, 3) if seconds > 0 else None,
        "learning": learning_report(check),
        **extra,
    }
    write_json(RunLayout(run_dir).summary, summary)
    return summary


def _fit(
    config: TrainConfig,
    run_dir: Path,
    layout: DataLayout | None,
    progress: bool,
    ckpt_path: Path | None,
    mlflow_run_id: str | None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    from kelpseg.train.datamodule import KelpDataModule
    from kelpseg.train.previews import choose_preview_tiles

    started = time.perf_counter()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = KelpDataModule(config, layout)  # reads tables and stats, never a tile
    module = KelpSegmentationModule(config, datamodule.band_stats)
    if ckpt_path is None and _rank() == 0:  # inputs are fine: only now create the run directory
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_files(config, run_dir, datamodule)
    logger = _make_mlflow_logger(config, run_dir, mlflow_run_id) if config.mlflow else None
    preview_ids = choose_preview_tiles(datamodule.val_frame, config.preview_n_tiles)
    all_callbacks = [*_callbacks(config, run_dir, preview_ids), *callbacks]
    trainer = _make_trainer(config, run_dir, all_callbacks, logger, progress)
    status = "failed"
    # Multi-GPU launchers re-run the user's command for ranks > 0: they find the run here.
    own_env = RUN_DIR_ENV not in os.environ
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
        status = "interrupted" if trainer.interrupted else "finished"
    except (KeyboardInterrupt, SystemExit, Interrupted) as exc:
        # Lightning turns a KeyboardInterrupt into SystemExit(1) after its cleanup
        status = "interrupted"
        if isinstance(exc, SystemExit) and not trainer.interrupted:
            raise
        raise Interrupted(f"continue with `kelpseg train --resume {run_dir}`") from None
    finally:
        if own_env:
            os.environ.pop(RUN_DIR_ENV, None)
        summary = None
        if trainer.is_global_zero:
            try:
                summary = _summary(
                    run_dir, config, trainer, status, wall_time_s=round(time.perf_counter() - started, 2)
                )
            except OSError as exc:  # e.g. the full disk that stopped the run: keep its error
                log.warning("%s: summary not written (%s)", RunLayout(run_dir).summary, exc)
        if summary is not None and logger is not None:
            best = RunLayout(run_dir).best_checkpoint
            _log_artifacts(
                logger, run_dir, best if status == "finished" else None, config.mlflow_log_checkpoint
            )
            if summary["best_score"] is not None:
                logger.log_metrics({"best_score": summary["best_score"]})
            logger.experiment.set_tag(logger.run_id, "learning", summary["learning"]["status"])
    return run_dir


def _has_checkpoints(run_dir: Path) -> bool:
    ckpts = RunLayout(run_dir).checkpoints
    return ckpts.is_dir() and any(p.suffix == ".ckpt" for p in ckpts.iterdir())


def _never_finished_an_epoch(run_dir: Path) -> bool:
    """A run dir whose run failed or was interrupted before any checkpoint (and is not running)."""
    if not RunLayout(run_dir).config.is_file() or _has_checkpoints(run_dir):
        return False
    try:
        import json

        status = json.loads(RunLayout(run_dir).summary.read_text()).get("status")
    except (OSError, ValueError):
        return False  # no summary yet: perhaps still starting in another process
    return status in ("failed", "interrupted")


def _clear_unstarted_run(run_dir: Path) -> None:
    for name in RunLayout.SMALL_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for folder in (RunLayout.CHECKPOINT_DIR, RunLayout.PREVIEW_DIR):
        shutil.rmtree(run_dir / folder, ignore_errors=True)


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` of a checkpoint, with a truncated or foreign file as one :class:`RunDirError`."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise
    except (EOFError, OSError, RuntimeError, ValueError) as exc:
        raise RunDirError(f"{path}: truncated or not a checkpoint ({_checkpoint_reason(exc)})") from None


def _checkpoint_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, EOFError) or "EOF" in text or "Errno 22" in text or "central directory" in text:
        return "the file ends early"
    return text[:160] or type(exc).__name__


def _write_run_files(config: TrainConfig, run_dir: Path, datamodule: Any) -> None:
    files = RunLayout(run_dir)
    config.save(files.config)
    from kelpseg.reference.stats import is_reference_stats_file

    if is_reference_stats_file(datamodule.band_stats_path):  # kept in kelpseg's format
        write_json(files.band_stats, datamodule.band_stats.to_dict())
    else:
        with atomic_path(files.band_stats) as tmp:
            shutil.copyfile(datamodule.band_stats_path, tmp)
    write_json(files.split, datamodule.split_info())
    write_json(files.provenance, provenance.collect())


def _provenance(run_dir: Path) -> dict[str, Any]:
    """The run's recorded provenance (a resumed run keeps the one it started with)."""
    path = RunLayout(run_dir).provenance
    return json.loads(path.read_text()) if path.is_file() else provenance.collect()


def train(
    config: TrainConfig,
    layout: DataLayout | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train one fold as ``config`` says; returns the run directory (see the module docstring).

    ``callbacks`` are extra Lightning callbacks (e.g. a hyper-parameter search reporter).
    """
    if _rank() != 0 and os.environ.get(RUN_DIR_ENV):  # a DDP worker started by rank 0's launcher
        run_dir = Path(os.environ[RUN_DIR_ENV])
        config = config.model_copy(update={"run_name": run_dir.name})
        return _fit(config, run_dir, layout, progress, None, None, callbacks)
    if config.run_name is None:
        config = config.model_copy(update={"run_name": default_run_name(config)})
    files = RunLayout.of(config.output_dir, str(config.run_name))
    run_dir = files.root
    if _never_finished_an_epoch(run_dir):
        log.warning("%s: a run that stopped before its first epoch; starting it again", run_dir)
        _clear_unstarted_run(run_dir)
    if files.checkpoints.exists() or files.config.exists():
        raise RunDirError(
            f"{run_dir}: run directory already exists; resume it with `kelpseg train --resume {run_dir}` "
            "or choose another run_name"
        )
    return _fit(config, run_dir, layout, progress, None, None, callbacks)


def resume(
    run_dir: str | Path,
    layout: DataLayout | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Continue a run from ``checkpoints/last.ckpt`` (same config, epoch count, optimizer, scheduler)."""
    run_dir = Path(run_dir)
    files = RunLayout(run_dir)
    config = _read_run_config(run_dir)
    last = files.last_checkpoint
    if not last.is_file():
        if _has_checkpoints(run_dir):
            raise RunDirError(f"{last}: checkpoint missing; train again under another run_name")
        # stopped before its first epoch: nothing to continue, so start it again, same config
        log.warning("%s: no epoch finished before the run stopped; starting it from scratch", run_dir)
        _clear_unstarted_run(run_dir)
        return train(config, layout=layout, progress=progress, callbacks=callbacks)
    if _rank() == 0:
        done = int(read_checkpoint(last, mmap=True).get("epoch", -1))
        rows = [r for r in read_metrics(run_dir) if int(r["epoch"]) <= done]
        _write_metrics(files.metrics, rows)
    run_id = None
    if config.mlflow and files.mlflow.is_file():
        run_id = json.loads(files.mlflow.read_text()).get("run_id")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        return _fit(config, run_dir, layout, progress, last, run_id, callbacks)


# ---- loading for inference ----------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A trained run ready for inference.

    ``model`` maps the normalised, padded batch (N, C, S, S) to kelp logits (N, 1, S, S);
    ``transform`` maps raw tiles (N, 7, 350, 350) with NaN at fill to that input; ``unpad`` maps
    (N, 1, S, S) back to (N, 1, 350, 350); ``band_stats`` is the channel -> stats table used.
    """

    config: TrainConfig
    model: nn.Module
    transform: BatchTransform
    unpad: Callable[[torch.Tensor], torch.Tensor]
    band_stats: dict[str, dict[str, Any]]
    run_dir: Path
    checkpoint: Path

    def predict_proba(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw tiles (N, 7, 350, 350) -> kelp probabilities (N, 350, 350)."""
        with torch.no_grad():
            logits = self.model(self.transform(raw))
            return torch.sigmoid(self.unpad(logits).float())[:, 0]


def _read_run_config(run_dir: Path) -> TrainConfig:
    path = RunLayout(run_dir).config
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a training run directory (no {RunLayout.CONFIG})")
    return TrainConfig.from_yaml(path)


def checkpoint_path(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """``best`` / ``last`` -> ``<run_dir>/checkpoints/<name>.ckpt``; any other value is a file path."""
    run_dir = Path(run_dir)
    path = RunLayout(run_dir).checkpoint(checkpoint)
    if not path.is_file():
        raise RunDirError(f"{path}: checkpoint not found in run {run_dir}")
    return path


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> KelpSegmentationModule:
    """A ``KelpSegmentationModule`` from a checkpoint written by training, in eval mode."""
    try:
        try:
            module = KelpSegmentationModule.load_from_checkpoint(
                str(path), map_location=map_location, weights_only=True
            )
        except pickle.UnpicklingError as exc:  # an object outside torch's safe list (e.g. an old scheduler)
            if "EOF" in str(exc) or "truncated" in str(exc):
                raise RunDirError(f"{path}: truncated or not a checkpoint (the file ends early)") from None
            log.info("%s holds non-tensor objects; loading it with full unpickling", path)
            module = KelpSegmentationModule.load_from_checkpoint(
                str(path), map_location=map_location, weights_only=False
            )
    except KelpsegError:
        raise
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise RunDirError(f"{path}: truncated or not a checkpoint ({_checkpoint_reason(exc)})") from None
    except Exception as exc:
        raise RunDirError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
    return module.eval()


def load_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    map_location: str | torch.device = "cpu",
    *,
    band_stats: str | Path | None = None,
    data_dir: str | Path | None = None,
    reference_score: str = "sigmoid",
) -> LoadedRun:
    """Rebuild model and transform of a run, whatever its format (:func:`detect_run_format`).

    A kelpseg run needs its checkpoint alone (the config file must exist). A run directory of the
    reference solution (:mod:`kelpseg.reference`) needs its band stats: ``band_stats`` (a file)
    or ``data_dir`` (its ``processed/`` holds the reference's stats JSON); ``reference_score``
    says how its two logits become the kelp probability ("sigmoid" as the reference did,
    "softmax" the fix). Both are ignored for kelpseg runs, which carry their own.
    """
    run_dir = Path(run_dir)
    kind = detect_run_format(run_dir)
    if kind == "reference":
        from kelpseg.reference.loader import load_reference_run

        return load_reference_run(
            run_dir,
            checkpoint,
            map_location,
            band_stats=band_stats,
            data_dir=data_dir,
            score=reference_score,
        )
    if kind is None and run_dir.is_dir():
        raise RunDirError(
            f"{run_dir}: not a run directory: expected {RunLayout.CONFIG} (kelpseg run), or model/ "
            "(Azure ML export) or artifacts/ (MLflow run) of the reference solution"
        )
    _read_run_config(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    module = load_module(path, map_location)
    return LoadedRun(
        config=module.config,
        model=module.model.eval(),
        transform=module.transform.eval(),
        unpad=module.transform.unpad,
        band_stats=dict(module.hparams["band_stats"]),
        run_dir=run_dir,
        checkpoint=path,
    )
