"""Run one training to completion, whichever attempt this is: start, resume, or skip a finished run.

Both the fold fan-out and the sweep trials call :func:`train_or_resume` with a deterministic run
name. A retried attempt therefore finds the run directory of the attempt that died:

* ``summary.json`` says ``finished`` -> nothing to do (``skipped``);
* ``checkpoints/last.ckpt`` exists -> ``kelpseg.train.run.resume`` continues from it (the epoch
  count, optimizer, scheduler and metrics.csv go on);
* a directory without a checkpoint (the attempt died in its first epoch) holds nothing worth
  keeping and is replaced by a fresh ``train``.

A run directory created with another configuration is never touched (:class:`RunDirError`).

Extra Lightning callbacks (Tune reporting, fault injection) are handed to the training functions;
see :func:`call_with_callbacks`.

Fault injection, to rehearse pre-emption: with ``KELPSEG_TEST_CRASH_AFTER_EPOCH=<k>`` and
``KELPSEG_TEST_CRASH_MARKER_DIR=<dir>`` set, every run dies once, at the end of epoch ``k`` (after
that epoch's ``last.ckpt`` is written): the first attempt leaves ``<dir>/<run_name>.crashed``
and kills its worker process (in a Ray worker) or raises :class:`SimulatedCrash` (in-process).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint

from kelpseg.layout import DataLayout, RunLayout
from kelpseg.train.config import TrainConfig
from kelpseg.train.run import RunDirError

log = logging.getLogger(__name__)

CRASH_EPOCH_ENV = "KELPSEG_TEST_CRASH_AFTER_EPOCH"
CRASH_MARKER_ENV = "KELPSEG_TEST_CRASH_MARKER_DIR"
#: Exit status of a worker killed by fault injection (like a pre-empted process).
CRASH_EXIT_CODE = 75


class SimulatedCrash(RuntimeError):
    """Raised by fault injection when the training runs in the calling process."""


@dataclass(frozen=True)
class RunOutcome:
    """What one attempt did: ``trained`` (fresh), ``resumed`` or ``skipped`` (already finished)."""

    run_dir: Path
    action: str
    summary: dict[str, Any]


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = RunLayout(run_dir).summary
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def call_with_callbacks(
    fn: Callable[..., Path], *args: Any, callbacks: Sequence[pl.Callback], **kwargs: Any
) -> Path:
    """Call ``train`` / ``resume`` with extra Lightning callbacks.

    Uses their ``callbacks`` parameter when they have one; otherwise wraps the callback factory of
    :mod:`kelpseg.train.run` for the duration of the call (this process only).
    """
    if not callbacks:
        return fn(*args, **kwargs)
    if "callbacks" in inspect.signature(fn).parameters:
        return fn(*args, callbacks=list(callbacks), **kwargs)
    from kelpseg.train import run as run_module

    original = run_module._callbacks

    def with_extra(*a: Any, **k: Any) -> list[pl.Callback]:
        return [*original(*a, **k), *callbacks]

    run_module._callbacks = with_extra
    try:
        return fn(*args, **kwargs)
    finally:
        run_module._callbacks = original


def train_or_resume(
    config: TrainConfig,
    *,
    layout: DataLayout | None = None,
    progress: bool = False,
    callbacks: Sequence[pl.Callback] = (),
) -> RunOutcome:
    """Train ``config`` (``run_name`` must be set), resuming or skipping as the run directory says."""
    from kelpseg.train.run import resume, train

    if not config.run_name:
        raise ValueError("train_or_resume needs a config with run_name set")
    files = RunLayout.of(config.output_dir, config.run_name)
    run_dir, stored = files.root, files.config
    if stored.is_file():
        previous = TrainConfig.from_yaml(stored)
        if previous.to_dict() != config.to_dict():
            changed = sorted(k for k, v in config.to_dict().items() if previous.to_dict().get(k) != v)
            raise RunDirError(
                f"{run_dir}: run directory exists with another configuration "
                f"(differs in {', '.join(changed)}); choose another run_name or remove it"
            )
        if read_summary(run_dir).get("status") == "finished":
            return RunOutcome(run_dir, "skipped", read_summary(run_dir))
        if files.last_checkpoint.is_file():
            call_with_callbacks(resume, run_dir, layout=layout, progress=progress, callbacks=callbacks)
            return RunOutcome(run_dir, "resumed", read_summary(run_dir))
        log.warning("%s: earlier attempt left no checkpoint; starting the run again", run_dir)
        shutil.rmtree(run_dir)
    call_with_callbacks(train, config, layout=layout, progress=progress, callbacks=callbacks)
    return RunOutcome(run_dir, "trained", read_summary(run_dir))


class AfterCheckpointCallback(Checkpoint):
    """Base for callbacks whose ``on_train_epoch_end`` must see that epoch's checkpoints on disk.

    With one validation per epoch, ``ModelCheckpoint`` saves in ``on_train_epoch_end``, and
    Lightning runs ``Checkpoint`` callbacks after all others, in list order. Being a (saving
    nothing) ``Checkpoint`` listed after the run's checkpoint callbacks puts this hook after them.
    """


# ---- fault injection ----------------------------------------------------------------------------------
class CrashOnceCallback(AfterCheckpointCallback):
    """Dies at the end of epoch ``epoch`` the first time a run gets there (see the module docstring)."""

    def __init__(self, epoch: int, marker: Path, hard: bool) -> None:
        self.epoch = epoch
        self.marker = Path(marker)
        self.hard = hard

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.epoch or not trainer.is_global_zero:
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # crashed once already: carry on
        os.write(fd, f"epoch {self.epoch}\n".encode())
        os.close(fd)
        if self.hard:
            log.error("fault injection: killing this worker after epoch %d", self.epoch)
            os._exit(CRASH_EXIT_CODE)
        raise SimulatedCrash(f"fault injection: simulated crash after epoch {self.epoch}")


def fault_callbacks(run_name: str, hard: bool) -> list[pl.Callback]:
    """The fault-injection callback when the environment asks for one, else nothing."""
    epoch, marker_dir = os.environ.get(CRASH_EPOCH_ENV), os.environ.get(CRASH_MARKER_ENV)
    if not epoch or not marker_dir:
        return []
    return [CrashOnceCallback(int(epoch), Path(marker_dir) / f"{run_name}.crashed", hard)]
