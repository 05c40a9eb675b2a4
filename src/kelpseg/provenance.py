"""What produced a result: kelpseg's version, the git commit, the lock file and the key libraries.

Every training run directory gets ``provenance.json`` (``RunLayout.PROVENANCE``) and its MLflow
run the same facts as ``provenance.*`` tags, so that a score can be traced to the code and the
environment that made it. The lock file is ``requirements.lock`` at the root of a source checkout
(what ``make setup`` installs); ``$KELPSEG_LOCK_FILE`` names another one. Installed from a wheel
there is no checkout: the commit and the lock hash are then ``None``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import kelpseg

LOCK_FILE_NAME = "requirements.lock"
LOCK_FILE_ENV = "KELPSEG_LOCK_FILE"
#: Distributions whose versions decide what a model computes (PyPI names).
KEY_PACKAGES = ("torch", "segmentation-models-pytorch", "timm", "lightning", "numpy")
TAG_PREFIX = "provenance."


def source_root() -> Path | None:
    """The checkout kelpseg is imported from (``<root>/src/kelpseg``), or ``None`` for a wheel install."""
    root = Path(kelpseg.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def lock_file() -> Path | None:
    """``$KELPSEG_LOCK_FILE``, else ``requirements.lock`` of the source checkout, if it exists."""
    env = os.environ.get(LOCK_FILE_ENV)
    if env:
        return Path(env)
    root = source_root()
    path = root / LOCK_FILE_NAME if root is not None else None
    return path if path is not None and path.is_file() else None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_state(root: Path | None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout at ``root``; ``(None, None)`` when it is none."""
    if root is None:
        return None, None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, bool(status) if status is not None else None


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect() -> dict[str, Any]:
    """The provenance record (a JSON-ready dict)."""
    root = source_root()
    commit, dirty = git_state(root)
    lock = lock_file()
    return {
        "kelpseg_version": kelpseg.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "lock_file": lock.name if lock is not None else None,
        "lock_sha256": file_sha256(lock) if lock is not None and lock.is_file() else None,
        "python": platform.python_version(),
        "packages": package_versions(),
    }


def as_tags(record: dict[str, Any]) -> dict[str, str]:
    """The record flattened into MLflow tags: ``provenance.git_commit``, ``provenance.torch``, ..."""
    tags = {}
    for key, value in record.items():
        if key == "packages":
            for name, version in value.items():
                tags[f"{TAG_PREFIX}{name}"] = str(version)
        else:
            tags[f"{TAG_PREFIX}{key}"] = str(value)
    return tags
