import subprocess
import sys
from pathlib import Path

from builders import write_dataset

STAGES = (
    "synth",
    "check-data",
    "plot-samples",
    "aoi-grouping",
    "eda",
    "band-stats",
    "split",
    "train",
    "train-all-folds",
    "sweep",
    "eval",
    "evaluate",
    "predict",
    "predict-and-submit",
    "cv-predict",
    "ensemble",
    "submission",
    "check-submission",
    "run",
)


def kelpseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kelpseg.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_stage() -> None:
    out = kelpseg("--help")
    assert out.returncode == 0
    for stage in STAGES:
        assert f" {stage} " in out.stdout, stage


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    out = kelpseg("eda", "--data-dir", str(tmp_path), "--quiet")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout
    assert "error:" in out.stderr
    assert "make aoi-grouping" in out.stderr.replace("\n", " ")


def test_check_data_exit_codes(tmp_path: Path) -> None:
    layout = write_dataset(tmp_path, ["AA000001"], ["BB000001"])
    ok = kelpseg("check-data", "--data-dir", str(tmp_path), "--quiet", "--checksums")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "data OK" in ok.stdout
    layout.mask_path("AA000001").unlink()
    bad = kelpseg("check-data", "--data-dir", str(tmp_path), "--quiet")
    assert bad.returncode == 1
    assert "AA000001_kelp.tif" in bad.stdout and "not found" in bad.stdout
    assert "1 problem(s) found" in bad.stdout


def test_bad_training_option_is_refused(tmp_path: Path) -> None:
    out = kelpseg("train", "--data-dir", str(tmp_path), "--set", "encoder=not-an-encoder", "--quiet")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "not-an-encoder" in out.stderr
