"""Score a folder of predictions against a folder of ground-truth masks.

Files are ``<tile_id>_kelp.tif`` on both sides and are paired by tile id (never by sort
order). A prediction may be a 0/1 integer mask or a float32 kelp probability, which is
thresholded as ``p >= threshold``.

The headline number is the competition metric: kelp Dice over all pixels of all tiles
together, ``2·ΣTP / (2·ΣTP + ΣFP + ΣFN)``. The report adds IoU, precision, recall, the
background+kelp macro Dice (only to compare with old numbers) and the distribution of
per-tile Dice. Tiles where neither the truth nor the prediction has a kelp pixel have no
meaningful per-tile Dice; they are counted separately (``n_both_empty``) instead of entering
the per-tile mean as 1, which would reward the many kelp-free tiles and hide errors on the
tiles that matter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from rasterio.errors import RasterioIOError

from kelpseg.errors import KelpsegError, TileError
from kelpseg.evaluate.metrics import ConfusionCounts, scores_from_counts
from kelpseg.io.atomic import write_json, write_text
from kelpseg.io.tiles import gdal_reason, read_mask
from kelpseg.layout import MASK_SUFFIX, tile_id_from_path
from kelpseg.parallel import pmap

#: How many ids an error message lists before it only gives the count.
MAX_LISTED_IDS = 10


# ---- shared helpers (also used by threshold search, ensembles and submissions) -------------
def binarize(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Kelp where ``prob >= threshold``, compared in float32 by every module alike.

    Probabilities are stored as float32, so the threshold is rounded to float32 too: a pixel
    written as 0.45 is kelp at threshold 0.45 (in float64, float32(0.45) = 0.4499999881 would
    fall below it). The threshold search bins with the same float32 values.
    """
    return np.greater_equal(np.asarray(prob, dtype=np.float32), np.float32(threshold))


def format_ids(ids: Iterable[str], limit: int = MAX_LISTED_IDS) -> str:
    """``'a, b, c'`` or ``'a, b, … (25 in all)'`` for error messages."""
    ids = sorted(ids)
    head = ", ".join(ids[:limit])
    return head if len(ids) <= limit else f"{head}, … ({len(ids)} in all)"


def prediction_files(folder: str | Path, what: str = "predictions") -> dict[str, Path]:
    """``tile_id -> path`` of every ``*_kelp.tif`` directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KelpsegError(f"{folder}: {what} folder not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.glob(f"*{MASK_SUFFIX}")):
        tid = tile_id_from_path(path)
        if tid in files:
            raise KelpsegError(f"{folder}: two files for tile {tid}: {files[tid].name}, {path.name}")
        files[tid] = path
    return files


def paired_files(
    gt_dir: str | Path, other_dir: str | Path, what: str
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Ground-truth masks of ``gt_dir`` and the ``what`` files (predictions, probabilities) of
    ``other_dir`` by tile id; both folders must hold the same tile ids."""
    truth = prediction_files(gt_dir, "ground-truth")
    other = prediction_files(other_dir, what)
    if not truth:
        raise KelpsegError(f"{gt_dir}: no *{MASK_SUFFIX} ground-truth masks found")
    check_same_ids(truth, other, str(other_dir), f"{what} files")
    return truth, other


def check_same_ids(expected: Iterable[str], got: Iterable[str], where: str, what: str) -> None:
    """Raise KelpsegError naming missing and extra tile ids when the two sets differ."""
    expected, got = set(expected), set(got)
    missing, extra = expected - got, got - expected
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({format_ids(missing)})")
    if extra:
        parts.append(f"{len(extra)} extra ({format_ids(extra)})")
    raise KelpsegError(f"{where}: {what} do not match the expected tiles: " + "; ".join(parts))


def read_prediction(path: str | Path) -> np.ndarray:
    """Read a one-band prediction: 0/1 integer labels -> uint8, floats -> float32 probabilities.

    Raises TileError naming the file for a band count other than 1, labels outside {0, 1},
    probabilities outside [0, 1] or NaN.
    """
    path = Path(path)
    if not path.exists():
        raise TileError(f"{path}: file not found")
    try:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise TileError(f"{path}: expected a one-band prediction, got {src.count} bands")
            data = src.read(1)
    except RasterioIOError as exc:
        raise TileError(f"{path}: not a readable GeoTIFF ({gdal_reason(exc)})") from None
    if np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32, copy=False)
        if np.isnan(data).any() or data.min() < 0 or data.max() > 1:
            raise TileError(f"{path}: expected probabilities in [0, 1], got values outside (or NaN)")
        return data
    if data.dtype == bool:
        return data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        values = np.unique(data)
        if not np.isin(values, (0, 1)).all():
            raise TileError(f"{path}: expected 0/1 labels, got values {values[:10].tolist()}")
        return data.astype(np.uint8, copy=False)
    raise TileError(f"{path}: unsupported prediction dtype {data.dtype}")


def prediction_to_labels(pred: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean kelp mask from :func:`read_prediction` output (labels kept, floats thresholded)."""
    if np.issubdtype(pred.dtype, np.floating):
        return binarize(pred, threshold)
    return pred.astype(bool, copy=False)


# ---- the report --------------------------------------------------------------------------
TILE_COLUMNS = ("tile_id", "tp", "fp", "fn", "tn", "gt_pixels", "pred_pixels", "dice")


@dataclass
class EvalReport:
    """Result of :func:`evaluate_folders`.

    ``scores``: ``dice`` (the competition metric), ``iou``, ``precision``, ``recall``,
    ``macro_dice``. ``per_tile``: one row per tile (``dice`` NaN where both sides are empty).
    ``per_tile_summary``: distribution of the per-tile Dice over tiles where at least one side
    has kelp, plus ``n_both_empty`` and counts of kelp-free tiles with false alarms and of kelp
    tiles with nothing predicted.
    """

    gt_dir: str
    preds_dir: str
    threshold: float
    counts: ConfusionCounts
    scores: dict[str, float]
    per_tile_summary: dict[str, Any]
    per_tile: pd.DataFrame = field(repr=False)

    @property
    def dice(self) -> float:
        return self.scores["dice"]

    @property
    def n_tiles(self) -> int:
        return len(self.per_tile)

    def to_dict(self, worst_n: int = 10) -> dict[str, Any]:
        scored = self.per_tile.dropna(subset=["dice"]).sort_values(["dice", "tile_id"])
        worst = scored.head(worst_n)[["tile_id", "dice", "gt_pixels", "pred_pixels"]]
        return {
            "metric": "kelp Dice over all pixels of all tiles (competition metric)",
            "gt_dir": self.gt_dir,
            "preds_dir": self.preds_dir,
            "threshold": self.threshold,
            "n_tiles": self.n_tiles,
            **{k: float(v) for k, v in self.scores.items()},
            "counts": {
                "tp": self.counts.tp,
                "fp": self.counts.fp,
                "fn": self.counts.fn,
                "tn": self.counts.tn,
            },
            "per_tile_dice": self.per_tile_summary,
            "worst_tiles": worst.to_dict(orient="records"),
        }


def per_tile_summary(per_tile: pd.DataFrame) -> dict[str, Any]:
    """Distribution of per-tile Dice; both-empty tiles are counted apart, not scored as 1."""
    dice = per_tile["dice"].dropna().to_numpy(dtype=np.float64)
    gt_empty = per_tile["gt_pixels"] == 0
    pred_empty = per_tile["pred_pixels"] == 0
    out: dict[str, Any] = {
        "n_scored": int(dice.size),
        "n_both_empty": int((gt_empty & pred_empty).sum()),
        "n_false_alarm_tiles": int((gt_empty & ~pred_empty).sum()),
        "n_missed_tiles": int((~gt_empty & pred_empty).sum()),
    }
    names = ("mean", "std", "min", "q05", "q25", "median", "q75", "q95", "max")
    if dice.size == 0:
        out.update(dict.fromkeys(names))
        return out
    q = np.quantile(dice, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    values = (dice.mean(), dice.std(), q[0], q[1], q[2], q[3], q[4], q[5], q[6])
    out.update({n: float(v) for n, v in zip(names, values, strict=True)})
    return out


def report_from_counts(
    tile_ids: Sequence[str],
    counts: Sequence[ConfusionCounts],
    threshold: float,
    gt_dir: str | Path = "",
    preds_dir: str | Path = "",
) -> EvalReport:
    """Assemble an :class:`EvalReport` from per-tile confusion counts."""
    arr = np.array([(c.tp, c.fp, c.fn, c.tn) for c in counts], dtype=np.int64).reshape(-1, 4)
    tp, fp, fn, tn = arr.T
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)
    per_tile = pd.DataFrame(
        {
            "tile_id": list(tile_ids),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "gt_pixels": tp + fn,
            "pred_pixels": tp + fp,
            "dice": dice,
        }
    )
    total = ConfusionCounts(*(int(v) for v in arr.sum(axis=0)))
    return EvalReport(
        gt_dir=str(gt_dir),
        preds_dir=str(preds_dir),
        threshold=float(threshold),
        counts=total,
        scores=scores_from_counts(total.tp, total.fp, total.fn, total.tn),
        per_tile_summary=per_tile_summary(per_tile),
        per_tile=per_tile,
    )


def _tile_counts(pair: tuple[Path, Path], threshold: float) -> ConfusionCounts:
    gt_path, pred_path = pair
    truth = read_mask(gt_path)
    pred = read_prediction(pred_path)
    if pred.shape != truth.shape:
        raise TileError(f"{pred_path}: prediction shape {pred.shape} != mask shape {truth.shape}")
    return ConfusionCounts.from_arrays(prediction_to_labels(pred, threshold), truth)


def evaluate_folders(
    gt_dir: str | Path,
    preds_dir: str | Path,
    threshold: float = 0.5,
    workers: int = 2,
    progress: bool = True,
) -> EvalReport:
    """Score ``preds_dir`` against ``gt_dir`` (both holding ``<tile_id>_kelp.tif``).

    The two folders must hold the same tile ids; otherwise a KelpsegError lists the missing
    and extra ids (the first 10 of each and their counts).
    """
    truth, preds = paired_files(gt_dir, preds_dir, "prediction")
    ids = sorted(truth)
    pairs = [(truth[t], preds[t]) for t in ids]
    counts = pmap(lambda p: _tile_counts(p, threshold), pairs, workers, progress, "evaluate", threads=True)
    return report_from_counts(ids, counts, threshold, gt_dir, preds_dir)


def write_report(report: EvalReport, path: str | Path, per_tile_path: str | Path | None = None) -> Path:
    """Write the report as JSON (atomically); optionally the per-tile table as CSV."""
    path = write_json(path, report.to_dict())
    if per_tile_path is not None:
        write_text(per_tile_path, report.per_tile.to_csv(index=False, float_format="%.6g"))
    return path
