"""The reference solution's band-stats JSON: finding it, reading it, checking it covers a model.

Its ``calculate_band_stats.py`` writes ``{channel: {mean, std, min, max, q01, q99}}`` (no
wrapper object) into ``<data>/processed/`` as
``<UTC %Y-%m-%dT%H:%M:%S>-stats-fill_value=<nan|0.0>-mask_using_qa=<bool>-mask_using_water_mask=<bool>.json``
(Azure ML writes ``:`` as ``%3A``). Its min/max can be ``inf``/``-inf`` (a channel whose every
tile had a gap); prediction with a reference run reproduces what its transforms did with them,
and :func:`repaired_for_training` turns them into finite fill values for kelpseg's own training.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kelpseg.errors import KelpsegError
from kelpseg.train.transforms import STAT_KEYS

log = logging.getLogger(__name__)

STATS_NAME = re.compile(
    r"^(?P<stamp>.+?)-stats-fill_value=(?P<fill>nan|0\.0|0)-mask_using_qa=(?P<qa>True|False)"
    r"-mask_using_water_mask=(?P<wm>True|False)(?P<extra>.*)\.json$"
)


class ReferenceStatsError(KelpsegError):
    """A reference stats JSON is missing, unreadable or lacks a channel a model needs."""


def is_reference_stats(data: Any) -> bool:
    """Whether parsed JSON has the reference's shape (channel -> stats at the top level)."""
    return (
        isinstance(data, Mapping)
        and "channels" not in data
        and bool(data)
        and all(isinstance(v, Mapping) and "q01" in v for v in data.values())
    )


def is_reference_stats_file(path: str | Path) -> bool:
    """Whether ``path`` is a JSON file in the reference's stats format."""
    try:
        return is_reference_stats(json.loads(Path(path).read_text()))
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def stats_name_options(name: str) -> tuple[str, bool, bool] | None:
    """``(fill, mask_using_qa, mask_using_water_mask)`` from a reference stats file name, or None."""
    match = STATS_NAME.match(name.replace("%3A", ":"))
    if not match:
        return None
    fill = "nan" if match["fill"] == "nan" else "0"
    return fill, match["qa"] == "True", match["wm"] == "True"


def find_reference_stats(
    folder: str | Path,
    filename: str | None = None,
    fill: str = "nan",
    mask_using_qa: bool = True,
    mask_using_water_mask: bool = True,
) -> Path:
    """The stats JSON in ``folder``: ``filename`` if present (``:`` or ``%3A``), else the newest
    file whose name records the same options; an error naming the folder otherwise."""
    folder = Path(folder)
    if filename:
        for name in (filename, filename.replace(":", "%3A"), filename.replace("%3A", ":")):
            if (folder / name).is_file():
                return folder / name
    wanted = (fill, mask_using_qa, mask_using_water_mask)
    candidates = sorted(p for p in folder.glob("*-stats-*.json") if stats_name_options(p.name) == wanted)
    if not candidates:
        expected = (
            f"*-stats-fill_value={'nan' if fill == 'nan' else '0.0'}-mask_using_qa={mask_using_qa}"
            f"-mask_using_water_mask={mask_using_water_mask}.json"
        )
        named = f"{filename} or " if filename else ""
        raise ReferenceStatsError(f"{folder}: no reference band-stats JSON ({named}{expected}) found")
    if len(candidates) > 1:
        log.warning("%s: several stats files match; using the newest, %s", folder, candidates[-1].name)
    return candidates[-1]


def read_reference_stats(path: str | Path) -> dict[str, dict[str, float]]:
    """``channel -> {stat: float}`` of a reference stats JSON (non-finite values kept)."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceStatsError(f"{path}: band-stats JSON not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReferenceStatsError(f"{path}: not a JSON file ({exc})") from None
    if not is_reference_stats(data):
        raise ReferenceStatsError(
            f"{path}: not a reference band-stats JSON (expected channel -> {{{', '.join(STAT_KEYS)}}})"
        )
    table: dict[str, dict[str, float]] = {}
    for name, stats in data.items():
        missing = [k for k in STAT_KEYS if k not in stats]
        if missing:
            raise ReferenceStatsError(f"{path}: channel {name!r} lacks {', '.join(missing)}")
        try:
            table[name] = {k: float(stats[k]) for k in STAT_KEYS}
        except (TypeError, ValueError):
            raise ReferenceStatsError(f"{path}: channel {name!r} has a non-numeric statistic") from None
    return table


def check_channels(table: Mapping[str, Any], channels: Iterable[str], path: Path, strategy: str) -> None:
    """Every channel a model uses is in the stats, with finite values where its strategy needs them."""
    channels = list(channels)
    missing = [c for c in channels if c not in table]
    if missing:
        raise ReferenceStatsError(
            f"{path}: no statistics for channel(s) {', '.join(missing)} that the model uses "
            f"(expected all of {', '.join(channels)})"
        )
    needed = {"quantile": ("q01", "q99"), "min-max": ("min", "max"), "z-score": ("mean", "std")}
    for c in channels:
        bad = [k for k in needed.get(strategy, ()) if not math.isfinite(float(table[c][k]))]
        if bad:
            raise ReferenceStatsError(
                f"{path}: channel {c!r} has non-finite {', '.join(bad)}, which {strategy} normalisation "
                "needs (the reference's stats files had to be fixed by hand where this happened)"
            )


def repaired_for_training(table: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """A kelpseg band-stats ``channels`` table from a reference one: non-finite ``min``/``max``
    become ``q01``/``q99`` (finite fill values at the same end of the normalised range)."""
    out: dict[str, dict[str, Any]] = {}
    for name, stats in table.items():
        row = {k: float(v) for k, v in stats.items()}
        for key, fallback in (("min", "q01"), ("max", "q99")):
            if not math.isfinite(row[key]):
                row[key] = row[fallback]
        row.setdefault("count", 0)
        out[name] = row
    return out
