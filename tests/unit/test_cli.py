import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
        [sys.executable, "-m", "kelpseg.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},  # help and errors unwrapped
    )


def test_help_lists_every_stage() -> None:
    out = kelpseg("--help")
    assert out.returncode == 0
    for stage in STAGES:
        assert f" {stage} " in out.stdout, stage


def test_runtime_failure_is_one_line_on_stderr_exit_1(tmp_path: Path) -> None:
    out = kelpseg("eda", "--data-dir", str(tmp_path), "--quiet")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert "error:" in out.stderr and "error:" not in out.stdout
    message = " ".join(out.stderr.split())
    assert "`kelpseg aoi-grouping` (make aoi-grouping)" in message


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


def test_inference_options_reach_every_prediction_command(tmp_path: Path, monkeypatch) -> None:
    """--checkpoint/--tta/--tta-merge/--bf16/--land-mask/--batch-size/--workers/--quiet arrive as
    one InferenceOptions in eval, predict, predict-and-submit and cv-predict."""
    from typer.testing import CliRunner

    from kelpseg import cli
    from kelpseg.infer import predict, workflows
    from kelpseg.infer.predict import InferenceOptions

    seen: dict[str, InferenceOptions] = {}

    def capture(name: str, result: object):
        def fake(*args, options: InferenceOptions, **kwargs):
            seen[name] = options
            return result

        return fake

    done = type("Done", (), {"dice": 0.5, "threshold": 0.4, "dice_at": lambda self, t: 0.5})()
    written = type(
        "Written",
        (),
        {
            "n_tiles": 1,
            "threshold": 0.4,
            "threshold_source": "x",
            "seconds": 0.1,
            "tar": "t",
            "weights": [1.0],
        },
    )()
    monkeypatch.setattr(predict, "evaluate_run", capture("eval", done))
    monkeypatch.setattr(predict, "predict_folder", capture("predict", written))

    def positional(name: str, at: int):
        def fake(*args, **kwargs):
            seen[name] = args[at]
            return written

        return fake

    monkeypatch.setattr(workflows, "predict_and_submit", positional("pas", 4))
    monkeypatch.setattr(workflows, "cv_predict", positional("cv", 7))

    flags = ["--checkpoint", "last", "--tta", "--tta-merge", "max", "--bf16", "--land-mask"]
    flags += ["--batch-size", "3", "--workers", "0", "--quiet"]
    runner = CliRunner()
    for args in (
        ["eval", "--run-dir", "r"],
        ["predict", "--run-dir", "r", "-i", "in", "-o", "out"],
        ["predict-and-submit", "--run-dir", "r", "-d", str(tmp_path)],
        ["cv-predict", "r0", "r1", "-d", str(tmp_path)],
    ):
        out = runner.invoke(cli.app, [*args, *flags])
        assert out.exit_code == 0, out.output
    expected = InferenceOptions(
        checkpoint="last",
        tta=True,
        tta_merge="max",
        bf16=True,
        land_mask=True,
        batch_size=3,
        num_workers=0,
        progress=False,
    )
    assert set(seen) == {"eval", "predict", "pas", "cv"}
    # a command's --data-dir travels too (reference run dirs find their stats there)
    assert {k: v.data_dir for k, v in seen.items()} == {
        "eval": None,
        "predict": None,
        "pas": tmp_path,
        "cv": tmp_path,
    }
    assert all(dataclasses.replace(options, data_dir=None) == expected for options in seen.values()), seen
    defaults = runner.invoke(cli.app, ["eval", "--run-dir", "r"])
    assert defaults.exit_code == 0 and seen["eval"] == InferenceOptions()


def test_version_and_short_help() -> None:
    from kelpseg import __version__

    out = kelpseg("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"kelpseg {__version__}"
    short, long = kelpseg("predict", "-h"), kelpseg("predict", "--help")
    assert short.returncode == 0 and short.stdout == long.stdout
    assert "--tta-merge" in short.stdout and "<mean|max|min|gmean>" in short.stdout
    assert "[best|last|FILE]" in short.stdout
    assert "--install-completion" in kelpseg("-h").stdout


def test_choices_are_validated_as_usage_errors(tmp_path: Path) -> None:
    bad_merge = kelpseg("eval", "--run-dir", str(tmp_path), "--tta-merge", "median")
    assert bad_merge.returncode == 2
    assert "'median' is not one of 'mean', 'max', 'min', 'gmean'" in " ".join(bad_merge.stderr.split())
    bad_ckpt = kelpseg("eval", "--run-dir", str(tmp_path), "--checkpoint", "newest")
    assert bad_ckpt.returncode == 2 and "neither best nor last" in " ".join(bad_ckpt.stderr.split())
    bad_mode = kelpseg("ensemble", str(tmp_path), "-o", str(tmp_path / "o"), "--mode", "average")
    assert bad_mode.returncode == 2 and "'average' is not one of 'soft', 'vote'" in " ".join(
        bad_mode.stderr.split()
    )
    assert bad_merge.stdout == bad_ckpt.stdout == ""


def test_cv_predict_names_its_predictions_folder_with_preds_name() -> None:
    out = kelpseg("cv-predict", "-h")
    assert "--preds-name" in out.stdout and "--version" not in out.stdout


def test_print_config_prints_the_resolved_yaml_and_trains_nothing(tmp_path: Path) -> None:
    import yaml

    out = kelpseg(
        "train", "--print-config", "-d", str(tmp_path), "--fold", "3", "--set", "lr=1e-4", "--set", "epochs=4"
    )
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["fold"] == 3 and printed["lr"] == 1e-4 and printed["epochs"] == 4
    assert printed["data_dir"] == str(tmp_path)
    assert printed["architecture"] == "unet"  # the defaults are resolved too
    assert not (tmp_path / "runs").exists() and not Path("runs", "unet").exists()


def test_exit_codes_follow_usage_versus_runtime() -> None:
    from kelpseg.cli import exit_code
    from kelpseg.distributed.space import SweepSpaceError
    from kelpseg.errors import KelpsegError, StageNotRunError
    from kelpseg.train.config import ConfigError
    from kelpseg.train.run import RunDirError

    assert exit_code(ConfigError("x")) == exit_code(SweepSpaceError("x")) == 2
    assert (
        exit_code(StageNotRunError("x")) == exit_code(RunDirError("x")) == exit_code(KelpsegError("x")) == 1
    )


def test_verbose_sets_the_kelpseg_log_level() -> None:
    import logging

    from kelpseg.cli import setup_logging

    logger = logging.getLogger("kelpseg")
    before = (logger.level, list(logger.handlers))
    try:
        for count, level in ((0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG), (5, logging.DEBUG)):
            setup_logging(count)
            assert logger.level == level
            assert sum(getattr(h, "_kelpseg_cli", False) for h in logger.handlers) == 1
    finally:
        logger.setLevel(before[0])
        logger.handlers[:] = before[1]
    out = kelpseg("-vv", "train", "--print-config")
    assert out.returncode == 0


def test_scene_commands_receive_the_scene_and_inference_options(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from kelpseg import cli
    from kelpseg.scene import mapping, timeseries

    seen: dict[str, object] = {}
    done = type(
        "Done",
        (),
        {
            "summary": {"kelp_ha": 1, "n_polygons": 1, "observed_clear_ha": 2, "cloud_masked_ha": 0},
            "scene_id": "S",
            "n_windows": 1,
            "n_skipped": 0,
            "seconds": 0.1,
        },
    )()
    monkeypatch.setattr(mapping, "map_scene", lambda scene, runs, out, opts: seen.update(scene=opts) or done)
    monkeypatch.setattr(
        timeseries, "map_series", lambda *a, **k: seen.update(series=(a[3], k)) or ("c.csv", "p.png", [])
    )
    flags = ["-r", "r0", "-r", "r1", "-o", str(tmp_path), "--overlap", "0.25", "--qa-bits", "cloud, shadow"]
    flags += ["--weights", "1,2", "--tta", "--batch-size", "4", "--workers", "0", "--quiet"]
    runner = CliRunner()
    out = runner.invoke(cli.app, ["scene", "s.tif", *flags])
    assert out.exit_code == 0, out.output
    series = runner.invoke(cli.app, ["scene-series", str(tmp_path), *flags, "--ray"])
    assert series.exit_code == 0, series.output
    opts = seen["scene"]
    assert opts.overlap == 0.25 and opts.qa_bits == ["cloud", "shadow"] and opts.weights == [1.0, 2.0]
    assert opts.dem is None and opts.skip_land is True and opts.min_mapping_unit == 2
    assert opts.inference.tta and opts.inference.batch_size == 4 and opts.inference.num_workers == 0
    series_opts, series_kwargs = seen["series"]
    assert series_opts == opts and series_kwargs == {"ray": True, "ray_address": None}


def test_synth_revisit_knobs(tmp_path: Path) -> None:
    """--max-crop-offset reaches the generator (offsets past the default 6 px); 200 is refused."""
    import pandas as pd

    out = kelpseg(
        "synth", "--data-dir", str(tmp_path), "--n-train", "12", "--n-test", "3", "--quiet",
        "--max-crop-offset", "60", "--p-chain", "0.5", "--p-dem-misregistration", "0.5", "--workers", "1",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    truth = pd.read_csv(tmp_path / "truth" / "aoi_membership.csv")
    assert len(truth) == 15 and truth[["shift_x", "shift_y"]].to_numpy().max() > 6
    bad = kelpseg("synth", "--data-dir", str(tmp_path / "b"), "--n-train", "2", "--max-crop-offset", "200")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "max_crop_offset must be in [0, 116], got 200" in " ".join(bad.stderr.split())


def test_tables_in_a_log_are_not_cut_to_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from rich.table import Table

    cli_app = importlib.import_module("kelpseg.cli.app")  # the module (kelpseg.cli.app is also the Typer)

    monkeypatch.delenv("COLUMNS", raising=False)
    console = cli_app._console()  # stdout is not a terminal under pytest
    assert console.width == cli_app.LOG_WIDTH
    table = Table()
    for name in ("fold", "val_tiles", "val_dice", "ndvi_val_dice", "check", "learning", "retries"):
        table.add_column(name)
    table.add_row("0", "29", "0.8767", "0.8675", "ok", "ok", "0")
    with console.capture() as captured:
        console.print(table)
    assert "ndvi_val_dice" in captured.get() and "…" not in captured.get()
    monkeypatch.setenv("COLUMNS", "100")
    assert cli_app._console().width == 100
