"""Packaged recipes: training configs (``train/<name>.yaml``) and sweep spaces (``sweeps/<name>.yaml``).

They ship inside the package (read through :mod:`importlib.resources`), so ``kelpseg run`` and
``kelpseg train -c cpu-demo`` work after a normal ``pip install``; in a source checkout the root
``configs/`` is a link to this folder. Wherever a config or a sweep space is named
(``--config``, ``--space``, a space's ``base:``), an existing file is used as it is, and otherwise a
recipe name (``cpu-demo``, ``best``, ``cpu-smoke``, ``configs/train/best.yaml``) means the
packaged file.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["recipe_names", "resolve_recipe", "sweep_space", "train_recipe"]

TRAIN, SWEEPS = "train", "sweeps"


def _folder(kind: str) -> Path:
    return Path(str(files(__name__) / kind))


def recipe_names(kind: str = TRAIN) -> list[str]:
    """Names of the packaged recipes of ``kind`` (``train`` or ``sweeps``)."""
    return sorted(p.stem for p in _folder(kind).glob("*.yaml"))


def _packaged(kind: str, name: str) -> Path:
    path = _folder(kind) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no packaged {kind} recipe {name!r}; packaged: {', '.join(recipe_names(kind))}"
        )
    return path


def train_recipe(name: str) -> Path:
    """The packaged training config ``name`` (``cpu-demo``, ``best``)."""
    return _packaged(TRAIN, name)


def sweep_space(name: str) -> Path:
    """The packaged sweep space ``name`` (``cpu-smoke``, ...)."""
    return _packaged(SWEEPS, name)


def resolve_recipe(path: str | Path, kind: str = TRAIN) -> Path:
    """``path`` when it is an existing file; else the packaged recipe it names; else ``path``.

    A name is a bare stem (``cpu-demo``), a file name (``cpu-demo.yaml``) or the checkout path
    (``configs/<kind>/cpu-demo.yaml``); anything else is returned unchanged for the caller to report.
    """
    path = Path(path)
    if path.is_file():
        return path
    parts = path.parent.parts
    if parts in ((), ("configs", kind)) and path.suffix in ("", ".yaml") and path.stem in recipe_names(kind):
        return _packaged(kind, path.stem)
    return path
