"""RunLayout: the one definition of a training run directory's files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kelpseg.layout import (
    RunLayout,
    detect_run_format,
    is_valid_run_name,
    register_run_format,
    run_formats,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def test_paths_inside_the_run_dir(tmp_path: Path) -> None:
    files = RunLayout.of(tmp_path, "unet-r18-fold0")
    assert files.root == tmp_path / "unet-r18-fold0"
    assert files.config.name == "config.yaml"
    assert files.summary.name == "summary.json"
    assert files.threshold.name == "threshold.json"
    assert files.best_checkpoint == files.root / "checkpoints" / "best.ckpt"
    assert files.last_checkpoint == files.root / "checkpoints" / "last.ckpt"
    assert files.checkpoint("elsewhere/x.ckpt") == Path("elsewhere/x.ckpt")
    assert files.previews == files.root / "previews"
    assert set(RunLayout.SMALL_FILES) >= {"config.yaml", "metrics.csv", "summary.json", "split.json"}


def test_run_names() -> None:
    assert is_valid_run_name("unet-tu-effnet_b5-fold0-20240101T000000Z")
    assert not is_valid_run_name("a/b")
    assert not is_valid_run_name("")


def test_detect_kelpseg_and_registered_formats(tmp_path: Path) -> None:
    assert detect_run_format(tmp_path) is None
    (tmp_path / "config.yaml").write_text("fold: 0\n")
    assert detect_run_format(tmp_path) == "kelpseg"

    class Other:
        kind = "other-tool"

        @classmethod
        def matches(cls, root: Path) -> bool:
            return (root / "other.marker").is_file()

    other = tmp_path / "other"
    other.mkdir()
    (other / "other.marker").write_text("")
    register_run_format(Other)
    try:
        assert detect_run_format(other) == "other-tool"
        assert detect_run_format(tmp_path) == "kelpseg"
        assert run_formats()[-1] == "other-tool"
    finally:
        from kelpseg import layout

        layout._RUN_FORMATS.remove(Other)
    with pytest.raises(TypeError, match="kind"):
        register_run_format(object)


def test_run_dir_file_names_are_spelled_only_in_layout() -> None:
    """Every reader and writer of run directories goes through RunLayout."""
    out = subprocess.run(
        ["grep", "-rln", r'"summary.json"\|"last.ckpt"\|"config.yaml"\|"threshold.json"', str(SRC)],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert [Path(p).relative_to(SRC).as_posix() for p in out] == ["kelpseg/layout.py"]
