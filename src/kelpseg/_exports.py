"""Lazy public APIs for the subpackages: ``from kelpseg.train import TrainConfig`` without
importing torch (or the rest of the subpackage) until a name is used.

Each subpackage lists ``name -> module`` once; :func:`lazy_exports` returns its ``__all__``,
``__getattr__`` and ``__dir__`` (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, names: Mapping[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``names`` maps each public name to the module (relative to ``package``) that defines it."""
    public = sorted(names)

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    def __dir__() -> list[str]:
        return public

    return public, __getattr__, __dir__
