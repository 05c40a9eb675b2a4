"""Run directories of the reference solution: the layout lives in :mod:`kelpseg.layout` (one place
for every run-directory format); this module names it for the reference package."""

from __future__ import annotations

from pathlib import Path

from kelpseg.layout import ReferenceRunError, ReferenceRunLayout

__all__ = ["ReferenceRunError", "ReferenceRunLayout", "is_reference_run"]


def is_reference_run(path: str | Path) -> bool:
    return ReferenceRunLayout.matches(path)
