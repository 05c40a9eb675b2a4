"""The competition metric and its companions, from confusion counts.

The headline number is the Dice coefficient of the kelp class computed over *all* evaluated
pixels together (one global intersection and one global sum), exactly as the competition
scored submissions. It is not the mean of per-tile Dice and not the background+kelp macro
mean that the reference solution logged (that one is kept only as ``macro_dice`` for
comparison with old numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ConfusionCounts:
    """Pixel counts of the kelp class. Add counts of several tiles with ``+``."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @classmethod
    def from_arrays(cls, pred: np.ndarray, target: np.ndarray) -> ConfusionCounts:
        """Counts from binary arrays of equal shape (anything non-zero is kelp)."""
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
        p = pred.astype(bool, copy=False)
        t = target.astype(bool, copy=False)
        tp = int(np.count_nonzero(p & t))
        fp = int(np.count_nonzero(p)) - tp
        fn = int(np.count_nonzero(t)) - tp
        return cls(tp, fp, fn, int(p.size) - tp - fp - fn)

    def scores(self) -> dict[str, float]:
        return scores_from_counts(self.tp, self.fp, self.fn, self.tn)


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den > 0 else empty


def scores_from_counts(tp: float, fp: float, fn: float, tn: float = 0) -> dict[str, float]:
    """Kelp Dice, IoU, precision, recall, and the background+kelp macro Dice.

    Empty cases follow the usual convention: when neither prediction nor truth has a kelp
    pixel, Dice and IoU are 1 (a perfect "nothing here"); precision with no predicted kelp is
    1 if there was no kelp to find, else 0; recall with no true kelp is 1.
    """
    nothing = tp + fp + fn == 0
    dice = _ratio(2 * tp, 2 * tp + fp + fn, 1.0)
    iou = _ratio(tp, tp + fp + fn, 1.0)
    precision = _ratio(tp, tp + fp, 1.0 if nothing or fn == 0 else 0.0)
    recall = _ratio(tp, tp + fn, 1.0)
    background_dice = _ratio(2 * tn, 2 * tn + fp + fn, 1.0)
    return {
        "dice": dice,
        "iou": iou,
        "precision": precision,
        "recall": recall,
        "macro_dice": (dice + background_dice) / 2,
    }


def kelp_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Competition metric for arrays holding every evaluated pixel (any shape)."""
    return ConfusionCounts.from_arrays(pred, target).scores()["dice"]
