"""Progress output: bars only on a terminal, one line per stage in a log, no escapes in a pipe."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kelpseg import progress


def test_line_progress_writes_one_line_on_close() -> None:
    out = io.StringIO()
    line = progress.LineProgress(3, "eda", stream=out)
    for _ in range(3):
        line.update()
    line.close()
    line.close()  # closing twice writes once
    text = out.getvalue()
    assert text.count("\n") == 1 and text.startswith("eda: 3 tiles in ") and text.endswith(" s\n")


def test_bar_off_a_terminal_is_a_line_and_disabled_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    assert isinstance(progress.bar(2, "x"), progress.LineProgress)  # pytest's stderr is no terminal
    quiet = progress.bar(2, "x", enabled=False)
    quiet.update(2)
    quiet.close()
    assert capsys.readouterr().err == ""


def test_verbose_follows_the_kelpseg_logger() -> None:
    logger = logging.getLogger("kelpseg")
    before = logger.level
    try:
        logger.setLevel(logging.WARNING)
        assert not progress.verbose()
        logger.setLevel(logging.INFO)
        assert progress.verbose()
    finally:
        logger.setLevel(before)


def test_a_stage_in_a_pipe_prints_no_bar_escapes(tmp_path: Path) -> None:
    """`kelpseg synth` then `aoi-grouping` with stdout/stderr to a pipe: plain lines, no `\\r` or `\\x1b[`."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    data = tmp_path / "data"
    outputs = []
    for args in (
        ["synth", "--data-dir", str(data), "--n-train", "6", "--n-test", "2", "--workers", "1"],
        ["aoi-grouping", "--data-dir", str(data), "--workers", "2"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "kelpseg.cli", *args], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    text = "".join(outputs)
    assert "\x1b[" not in text and "\r" not in text
    assert "synthetic tiles: 8 tiles in " in text
    assert re.search(r"^[\w ]+: \d+ tiles in \d+\.\d s$", outputs[1], re.MULTILINE), outputs[1]
