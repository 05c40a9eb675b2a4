"""The learning check's decisions on hand-made validations, the fallback recipe, the fold mark."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from kelpseg.pipeline import BELOW_BASELINE, fold_check
from kelpseg.train.config import TrainConfig
from kelpseg.train.health import (
    NOT_LEARNING,
    RECOVERED,
    LearningCheck,
    fallback_config,
    is_not_learning,
    learning_report,
)


def _validate(
    check: LearningCheck, dice: float, counts: tuple[int, int, int, int], epoch: int
) -> SimpleNamespace:
    trainer = SimpleNamespace(
        sanity_checking=False,
        callback_metrics={"val/dice": dice},
        current_epoch=epoch,
        global_step=10 * epoch,
        logger=None,
        should_stop=False,
    )
    module = SimpleNamespace(last_val_counts=counts, config=SimpleNamespace(run_name="r"))
    check.on_validation_end(trainer, module)  # type: ignore[arg-type]
    return trainer


def test_low_dice_is_flagged_only_after_the_given_validations(caplog: pytest.LogCaptureFixture) -> None:
    check = LearningCheck(after=3, min_dice=0.2)
    with caplog.at_level(logging.WARNING, logger="kelpseg.train.health"):
        _validate(check, 0.05, (5, 200, 95, 10_000), 0)
        _validate(check, 0.10, (10, 100, 90, 10_000), 1)
        assert check.status == "ok" and not caplog.records
        assert learning_report(check)["status"] == "unchecked"
        _validate(check, 0.12, (12, 80, 88, 10_000), 2)
    assert check.status == NOT_LEARNING and check.reason == "low_dice" and check.flagged_epoch == 2
    assert "not learning" in caplog.text and "0.1200" in caplog.text
    report = learning_report(check)
    assert report["status"] == NOT_LEARNING and report["best_val_dice"] == pytest.approx(0.12)
    assert is_not_learning({"learning": report})


def test_all_background_predictions_are_flagged_and_a_recovery_is_kept_visible() -> None:
    check = LearningCheck(after=1, min_dice=0.2, stop=True)
    trainer = _validate(check, 0.0, (0, 0, 100, 10_000), 0)
    assert (check.status, check.reason) == (NOT_LEARNING, "no_kelp_predicted")
    assert trainer.should_stop
    _validate(check, 0.6, (60, 20, 40, 10_000), 1)
    assert check.status == RECOVERED
    assert not is_not_learning({"learning": learning_report(check)})


def test_a_learning_run_and_kelp_free_validation_tiles_are_not_flagged() -> None:
    check = LearningCheck(after=2, min_dice=0.2)
    _validate(check, 0.0, (0, 0, 0, 10_000), 0)  # no kelp in val: Dice 0 says nothing
    _validate(check, 0.0, (0, 3, 0, 10_000), 1)
    assert check.status == "ok"
    good = LearningCheck(after=2, min_dice=0.2)
    _validate(good, 0.3, (30, 70, 70, 10_000), 0)
    _validate(good, 0.5, (50, 50, 50, 10_000), 1)
    assert learning_report(good)["status"] == "ok"
    assert learning_report(LearningCheck(after=0, min_dice=0.2))["status"] == "unchecked"


def test_fallback_halves_the_learning_rate_and_moves_the_seed() -> None:
    config = TrainConfig(lr=2e-3, seed=42, run_name="unet-fold1", mlflow=False)
    first, second = fallback_config(config, 1), fallback_config(config, 2)
    assert (first.lr, first.seed, first.run_name) == (pytest.approx(1e-3), 43, "unet-fold1-retry1")
    assert (second.lr, second.seed, second.run_name) == (pytest.approx(5e-4), 44, "unet-fold1-retry2")
    assert first.loss == config.loss and first.epochs == config.epochs
    with pytest.raises(ValueError, match="retry must be >= 1"):
        fallback_config(config, 0)


def test_fold_check_marks_folds_below_the_ndvi_baseline() -> None:
    assert fold_check(0.80, 0.67, "ok") == "ok"
    assert fold_check(0.16, 0.67, "ok") == BELOW_BASELINE
    assert fold_check(0.16, 0.67, NOT_LEARNING) == f"{BELOW_BASELINE}; NOT LEARNING"
