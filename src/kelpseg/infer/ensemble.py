"""Ensembles of prediction folders (several folds or models), streamed tile by tile.

``mode="soft"``: each member's per-tile prediction (float probability, or 0/1 label read as
0.0/1.0) is averaged with weights, and one threshold is applied::

    p̄ = Σ_i w_i · p_i / Σ_i w_i        kelp  ⇔  p̄ ≥ threshold

The divisor is the sum of the weights actually used (members with weight 0 are skipped).
The reference solution divided by ``Σw + w_first`` (it counted the first member's weight
twice), so its threshold ``t_ref`` acted on the true weighted mean as::

    t_equivalent = t_ref · (Σw + w_first) / Σw

e.g. 10 equal hard-label folds at t_ref = 0.48 need p̄ ≥ 0.528 (at least 6 votes of 10), and
its soft 10-fold ensemble at 0.45 acted as ≈ 0.496. :func:`reference_equivalent_threshold`
gives this number, to reproduce a reference submission exactly.

``mode="vote"``: each member is first cut to 0/1 (probabilities at ``member_threshold``),
then kelp where the weighted vote share ``Σ w_i · b_i / Σ w_i ≥ threshold`` (at 0.5 a tie
counts as kelp).

Weights may be given, or derived from validation scores with :func:`weights_from_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kelpseg.errors import KelpsegError, TileError
from kelpseg.evaluate.evaluate import (
    binarize,
    format_ids,
    prediction_files,
    prediction_to_labels,
    read_prediction,
)
from kelpseg.infer.choices import ENSEMBLE_MODES
from kelpseg.io.atomic import write_json
from kelpseg.io.tiles import write_mask, write_probability
from kelpseg.layout import mask_name
from kelpseg.parallel import pmap

PROBABILITIES_DIRNAME = "probabilities"
CONFIG_FILENAME = "ensemble_config.json"


def weights_from_scores(scores: Sequence[float], low: float = 0.2, high: float = 1.0) -> list[float]:
    """Min-max scale scores to weights in [low, high]: ``w = low + (high - low)·(s - s_min)/(s_max - s_min)``.

    The same formula as the reference's ``fold_weights.py``, but meant to be fed each member's
    honest validation (out-of-fold) score, not public leaderboard scores. When all scores are
    equal every member gets ``high`` (equal weights).
    """
    arr = np.asarray(list(scores), dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise KelpsegError(f"weights need one finite score per member, got {list(scores)}")
    if not 0 <= low <= high:
        raise KelpsegError(f"weight range must satisfy 0 <= low <= high, got low={low}, high={high}")
    span = arr.max() - arr.min()
    if span == 0:
        return [float(high)] * arr.size
    return [float(w) for w in low + (high - low) * (arr - arr.min()) / span]


def reference_equivalent_threshold(reference_threshold: float, weights: Sequence[float]) -> float:
    """Threshold on the true weighted mean that reproduces the reference averaging script.

    ``t_ref · (Σw + w_first) / Σw`` with ``w_first`` the first non-zero weight (see module doc).
    """
    used = [w for w in weights if w > 0]
    if not used:
        raise KelpsegError("at least one weight must be positive")
    return float(reference_threshold * (sum(used) + used[0]) / sum(used))


@dataclass
class EnsembleResult:
    """What :func:`ensemble_folders` wrote."""

    output_dir: Path
    tile_ids: list[str]
    members: list[Path]
    weights: list[float]
    threshold: float
    mode: str
    skipped: list[Path] = field(default_factory=list)
    probabilities_dir: Path | None = None

    @property
    def n_tiles(self) -> int:
        return len(self.tile_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "members": [str(p) for p in self.members],
            "weights": self.weights,
            "skipped_zero_weight": [str(p) for p in self.skipped],
            "n_tiles": self.n_tiles,
            "probabilities_dir": None if self.probabilities_dir is None else str(self.probabilities_dir),
        }


def _resolve_weights(pred_dirs: Sequence[Path], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(pred_dirs)
    weights = [float(w) for w in weights]
    if len(weights) != len(pred_dirs):
        raise KelpsegError(f"got {len(weights)} weights for {len(pred_dirs)} prediction folders")
    bad = [w for w in weights if not np.isfinite(w) or w < 0]
    if bad:
        raise KelpsegError(f"weights must be finite and >= 0, got {bad}")
    if not any(w > 0 for w in weights):
        raise KelpsegError("at least one ensemble weight must be positive")
    return weights


def _check_members(files: dict[Path, dict[str, Path]]) -> list[str]:
    """Sorted common tile ids; KelpsegError naming each folder's missing/extra ids otherwise."""
    sets = {d: set(f) for d, f in files.items()}
    union = set().union(*sets.values())
    common = set.intersection(*sets.values())
    if union == common:
        if not union:
            raise KelpsegError(f"no *_kelp.tif predictions in {', '.join(str(d) for d in files)}")
        return sorted(union)
    parts = [f"{d}: lacks {len(union - s)} ({format_ids(union - s)})" for d, s in sets.items() if s != union]
    raise KelpsegError("prediction folders hold different tiles: " + "; ".join(parts))


def ensemble_folders(
    pred_dirs: Sequence[str | Path],
    output_dir: str | Path,
    weights: Sequence[float] | None = None,
    threshold: float = 0.5,
    mode: str = "soft",
    member_threshold: float = 0.5,
    write_probabilities: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> EnsembleResult:
    """Combine per-tile predictions of several folders into one 0/1 mask per tile.

    Writes ``<output_dir>/<tile_id>_kelp.tif`` (uint8 0/1), with ``write_probabilities`` also
    ``<output_dir>/probabilities/<tile_id>_kelp.tif`` (float32 weighted mean or vote share),
    and ``ensemble_config.json``. Tiles are processed one at a time in a thread pool, so memory
    does not grow with the number of tiles; each file is written atomically.
    """
    if mode not in ENSEMBLE_MODES:
        raise KelpsegError(f"unknown ensemble mode {mode!r}; choose from {list(ENSEMBLE_MODES)}")
    if not 0 <= threshold <= 1:
        raise KelpsegError(f"threshold must lie in [0, 1], got {threshold}")
    dirs = [Path(d) for d in pred_dirs]
    if not dirs:
        raise KelpsegError("an ensemble needs at least one prediction folder")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise KelpsegError(f"prediction folders repeated: {[str(d) for d in dirs]}")
    all_weights = _resolve_weights(dirs, weights)
    output_dir = Path(output_dir)
    if output_dir.resolve() in {d.resolve() for d in dirs}:
        raise KelpsegError(f"{output_dir}: output folder must differ from the prediction folders")
    used = [(d, w) for d, w in zip(dirs, all_weights, strict=True) if w > 0]
    skipped = [d for d, w in zip(dirs, all_weights, strict=True) if w == 0]
    files = {d: prediction_files(d) for d, _ in used}
    tile_ids = _check_members(files)
    weight_sum = float(sum(w for _, w in used))
    prob_dir = output_dir / PROBABILITIES_DIRNAME if write_probabilities else None

    def combine(tid: str) -> None:
        total: np.ndarray | None = None
        for d, w in used:
            path = files[d][tid]
            pred = read_prediction(path)
            if mode == "vote":
                pred = prediction_to_labels(pred, member_threshold)
            if total is None:
                total = np.zeros(pred.shape, np.float64)
            elif pred.shape != total.shape:
                raise TileError(f"{path}: shape {pred.shape} differs from other members' {total.shape}")
            total += w * pred
        assert total is not None
        mean = (total / weight_sum).astype(np.float32)
        like = files[used[0][0]][tid]
        write_mask(output_dir / mask_name(tid), binarize(mean, threshold).astype(np.uint8), like=like)
        if prob_dir is not None:
            write_probability(prob_dir / mask_name(tid), mean, like=like)

    output_dir.mkdir(parents=True, exist_ok=True)
    pmap(combine, tile_ids, workers, progress, f"ensemble ({mode})", threads=True)
    result = EnsembleResult(
        output_dir=output_dir,
        tile_ids=tile_ids,
        members=[d for d, _ in used],
        weights=[w for _, w in used],
        threshold=float(threshold),
        mode=mode,
        skipped=skipped,
        probabilities_dir=prob_dir,
    )
    config = result.to_dict()
    config.update(member_threshold=member_threshold if mode == "vote" else None)
    config["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(output_dir / CONFIG_FILENAME, config)
    return result
