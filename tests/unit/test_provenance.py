"""Provenance record: version, git commit, lock hash, library versions; MLflow tags from it."""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

import kelpseg
from kelpseg import provenance


def test_collect_names_the_lock_file_and_its_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==2.0.0 \\\n    --hash=sha256:abc\n")
    monkeypatch.setenv(provenance.LOCK_FILE_ENV, str(lock))
    record = provenance.collect()
    assert record["kelpseg_version"] == kelpseg.__version__
    assert record["lock_file"] == "requirements.lock"
    assert record["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert record["packages"]["torch"] == metadata.version("torch")
    assert record["packages"]["segmentation-models-pytorch"] == metadata.version(
        "segmentation-models-pytorch"
    )
    assert set(provenance.KEY_PACKAGES) == set(record["packages"])


def test_missing_lock_file_is_recorded_as_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(provenance.LOCK_FILE_ENV, str(tmp_path / "nowhere.lock"))
    record = provenance.collect()
    assert record["lock_sha256"] is None


def test_git_state_of_a_repository_and_of_a_plain_folder(tmp_path: Path) -> None:
    assert provenance.git_state(tmp_path) == (None, None)
    assert provenance.git_state(None) == (None, None)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("1")
    subprocess.run(["git", "-C", str(repo), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(repo), *env, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert provenance.git_state(repo) == (head, False)
    (repo / "a.txt").write_text("2")
    assert provenance.git_state(repo) == (head, True)


def test_unknown_package_version_is_none() -> None:
    assert provenance.package_versions(("torch", "no-such-distribution-xyz")) == {
        "torch": metadata.version("torch"),
        "no-such-distribution-xyz": None,
    }


def test_tags_flatten_the_record() -> None:
    record = {
        "kelpseg_version": "0.1.0",
        "git_commit": None,
        "lock_sha256": "ff",
        "packages": {"torch": "2.14.1", "timm": None},
    }
    assert provenance.as_tags(record) == {
        "provenance.kelpseg_version": "0.1.0",
        "provenance.git_commit": "None",
        "provenance.lock_sha256": "ff",
        "provenance.torch": "2.14.1",
        "provenance.timm": "None",
    }
