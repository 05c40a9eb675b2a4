"""Catch a run that does not learn while it trains, and the documented fallback to retry it.

A fold can train "successfully" (no error, every epoch done) and still never learn: its
validation Dice stays at the level of a model that predicts no kelp at all (Dice 0) or barely
above it. Nothing downstream notices (the ensemble only down-weights such a fold), so
:class:`LearningCheck` watches every validation:

* ``no_kelp_predicted``: not one validation pixel reaches the decision threshold although the
  validation tiles hold kelp (the model predicts all background);
* ``low_dice``: the best validation Dice so far is below ``learning_check_min_dice``.

After ``learning_check_after`` validations (0: never) a run showing either sign is flagged as
*not learning*: a warning in the log, ``learning`` in ``summary.json`` (see
:func:`learning_report`), the MLflow tag ``learning`` and metric ``not_learning``. A run that
recovers later (Dice above the floor again) is marked ``recovered``, not ``ok``, so the warning
stays visible. With ``stop_if_not_learning`` the run stops at the first flag (its summary then
says ``status: finished`` with ``learning.status: not_learning``), which is what a retry wants.

Fallback (:func:`fallback_config`): retry ``i`` (1, 2, ...) trains the same fold with the
learning rate multiplied by ``RETRY_LR_FACTOR ** i`` and the seed increased by ``i`` (another
initialisation, sampler order and augmentation draw), under the run name
``<run_name>-retry<i>``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from kelpseg.train.config import TrainConfig

log = logging.getLogger(__name__)

#: Learning-rate multiplier of each retry of a run that did not learn.
RETRY_LR_FACTOR = 0.5
OK, NOT_LEARNING, RECOVERED = "ok", "not_learning", "recovered"


class LearningCheck(Callback):
    """Flags a run whose validations show it is not learning (see the module docstring)."""

    def __init__(self, after: int, min_dice: float, stop: bool = False) -> None:
        self.after = int(after)
        self.min_dice = float(min_dice)
        self.stop = stop
        self.validations = 0
        self.best_dice = 0.0
        self.status = OK
        self.reason = ""
        self.flagged_epoch: int | None = None

    # Lightning stores callback state in checkpoints, so a resumed run keeps its flag.
    def state_dict(self) -> dict[str, Any]:
        return {
            "validations": self.validations,
            "best_dice": self.best_dice,
            "status": self.status,
            "reason": self.reason,
            "flagged_epoch": self.flagged_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, value in state_dict.items():
            setattr(self, key, value)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.after <= 0:
            return
        counts = getattr(pl_module, "last_val_counts", None)
        dice = trainer.callback_metrics.get("val/dice")
        if dice is None or counts is None:
            return
        self.validations += 1
        self.best_dice = max(self.best_dice, float(dice))
        tp, fp, fn, _ = counts
        reason = ""
        if tp + fn == 0:  # no kelp in the validation tiles: Dice says nothing about learning
            reason = ""
        elif tp + fp == 0:
            reason = "no_kelp_predicted"
        elif self.best_dice < self.min_dice:
            reason = "low_dice"
        if self.validations < self.after:
            return
        if reason and self.status == OK:
            self.status, self.reason, self.flagged_epoch = NOT_LEARNING, reason, trainer.current_epoch
            log.warning(
                "run %s is not learning: after %d validations the best val/dice is %.4f "
                "(floor %.2f)%s; see `learning` in summary.json",
                getattr(pl_module.config, "run_name", ""),
                self.validations,
                self.best_dice,
                self.min_dice,
                ", and no validation pixel is predicted as kelp" if reason == "no_kelp_predicted" else "",
            )
            if trainer.logger is not None:
                trainer.logger.log_metrics({"not_learning": 1.0}, step=trainer.global_step)
            if self.stop:
                trainer.should_stop = True
        elif not reason and self.status == NOT_LEARNING:
            self.status = RECOVERED
            log.warning(
                "run %s recovered: val/dice %.4f at epoch %d",
                getattr(pl_module.config, "run_name", ""),
                self.best_dice,
                trainer.current_epoch,
            )

    def report(self) -> dict[str, Any]:
        return learning_report(self)


def learning_report(check: LearningCheck | None) -> dict[str, Any]:
    """The ``learning`` entry of ``summary.json``."""
    if check is None or check.after <= 0:
        return {"status": "unchecked"}
    return {
        "status": check.status if check.validations >= check.after else "unchecked",
        "reason": check.reason,
        "flagged_epoch": check.flagged_epoch,
        "validations": check.validations,
        "best_val_dice": round(check.best_dice, 6),
        "min_dice": check.min_dice,
        "after_validations": check.after,
    }


def learning_check(config: TrainConfig) -> LearningCheck:
    return LearningCheck(
        config.learning_check_after, config.learning_check_min_dice, config.stop_if_not_learning
    )


def is_not_learning(summary: dict[str, Any]) -> bool:
    """True when a run's ``summary.json`` says it did not learn (recovered runs count as learning)."""
    return (summary.get("learning") or {}).get("status") == NOT_LEARNING


def fallback_config(config: TrainConfig, retry: int) -> TrainConfig:
    """The config of retry ``retry`` (>= 1) of a run that did not learn (see the module docstring)."""
    if retry < 1:
        raise ValueError(f"retry must be >= 1, got {retry}")
    base = str(config.run_name or "run")
    return TrainConfig.from_dict(
        {
            **config.to_dict(),
            "lr": config.lr * RETRY_LR_FACTOR**retry,
            "seed": config.seed + retry,
            "run_name": f"{base}-retry{retry}",
        },
        source="retry config",
    )
