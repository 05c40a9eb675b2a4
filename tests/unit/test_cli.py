import dataclasses
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
