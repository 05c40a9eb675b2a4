"""A normal (non-editable) install works: wheel built, installed into a fresh venv, run elsewhere.

Offline and quick: the wheel is built without build isolation, the venv gets no pip, the wheel goes
into the venv's own site-packages (``pip --target``) and the dependencies come from the current
environment through a ``.pth`` line (a path line only: the editable-install hooks there stay unread).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out


def test_wheel_installs_and_runs_from_an_empty_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["COLUMNS"] = "200"
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            ".",
        ],
        source,
        env,
    )
    (wheel,) = dist.glob("kelpseg-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env
        ).stdout.strip()
    )
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        tmp_path,
        env,
    )
    (site / "kelpseg-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    script = site / "bin" / "kelpseg"  # pip --target puts the entry-point script here
    version = _run([str(python), str(script), "--version"], empty, env)
    assert version.stdout.startswith("kelpseg ")
    helped = _run([str(python), str(script), "run", "--help"], empty, env)
    assert "--config" in helped.stdout and "--set" in helped.stdout
    code = (
        "import kelpseg, pathlib; from kelpseg.train.config import load_config; "
        "from kelpseg.distributed.space import load_space; "
        "print(pathlib.Path(kelpseg.__file__).parent); "
        "print(load_config('cpu-demo').encoder, load_config('best').encoder, load_space('cpu-smoke').name)"
    )
    where, loaded = _run([str(python), "-c", code], empty, env).stdout.split("\n")[:2]
    assert Path(where).is_relative_to(site)  # the installed copy, not the checkout
    assert loaded.split() == ["resnet18", "tu-efficientnet_b5", "cpu-smoke"]
    assert list(empty.iterdir()) == []
