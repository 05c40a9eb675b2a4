"""Reading the YAML files users write (training configs, sweep spaces) with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kelpseg.errors import KelpsegError


def read_yaml(path: Path, what: str, error: type[KelpsegError] = KelpsegError) -> Any:
    """The parsed content of ``path``; ``error`` naming the file when it is missing or not YAML.

    ``what`` names the file in the "not found" message (e.g. "training config").
    """
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
