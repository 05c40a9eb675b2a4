"""Start / resume / skip decisions of one run, and the fold-config naming (no training here)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kelpseg.distributed.folds import FoldOutcome, FoldsResult, fold_configs
from kelpseg.distributed.runner import CrashOnceCallback, fault_callbacks, train_or_resume
from kelpseg.io.atomic import write_json
from kelpseg.train.config import TrainConfig
from kelpseg.train.run import RunDirError

BASE = {"encoder": "resnet18", "decoder_channels": [16, 8, 4], "spectral_indices": ["DEMWM", "NDVI"]}


def test_a_finished_run_is_skipped_and_a_changed_config_is_refused(tmp_path: Path) -> None:
    config = TrainConfig(**BASE, output_dir=str(tmp_path), run_name="r")
    run_dir = tmp_path / "r"
    config.save(run_dir / "config.yaml")
    write_json(run_dir / "summary.json", {"status": "finished", "best_val_dice": 0.5})
    outcome = train_or_resume(config)
    assert outcome.action == "skipped" and outcome.summary["best_val_dice"] == 0.5

    changed = config.model_copy(update={"lr": 1e-2, "epochs": 3})
    with pytest.raises(RunDirError, match=r"exists with another configuration \(differs in epochs, lr\)"):
        train_or_resume(changed)
    assert (run_dir / "config.yaml").is_file()  # untouched


def test_fold_configs_get_deterministic_names_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    named = fold_configs(TrainConfig(**BASE, run_name="exp"), [0, 3])
    assert [(c.fold, c.run_name) for c in named] == [(0, "exp-fold0"), (3, "exp-fold3")]
    assert named[0].output_dir == str(tmp_path / "runs") and named[0].data_dir == str(tmp_path / "data")
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    unnamed = fold_configs(TrainConfig(**BASE), [1], now=now)
    assert unnamed[0].run_name == "unet-resnet18-20260102T030405Z-fold1"


def test_fault_injection_is_off_unless_both_variables_are_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KELPSEG_TEST_CRASH_AFTER_EPOCH", raising=False)
    monkeypatch.delenv("KELPSEG_TEST_CRASH_MARKER_DIR", raising=False)
    assert fault_callbacks("r", hard=False) == []
    monkeypatch.setenv("KELPSEG_TEST_CRASH_AFTER_EPOCH", "1")
    monkeypatch.setenv("KELPSEG_TEST_CRASH_MARKER_DIR", str(tmp_path))
    (callback,) = fault_callbacks("r", hard=False)
    assert isinstance(callback, CrashOnceCallback)
    assert callback.epoch == 1 and callback.marker == tmp_path / "r.crashed" and not callback.hard


def test_fold_rows_for_the_table() -> None:
    result = FoldsResult(
        [FoldOutcome(0, "a-fold0", "/r/a-fold0", "finished", 0.7, 2, 10.0, 1, False, "")],
        parallel=True,
        wall_time_s=11.0,
    )
    assert result.ok and result.run_dirs == [Path("/r/a-fold0")]
    (row,) = result.rows()
    assert row["fold"] == 0 and row["best_val_dice"] == 0.7 and row["status"] == "finished"
    assert list(result.table().columns)[:3] == ["fold", "run_name", "status"]
