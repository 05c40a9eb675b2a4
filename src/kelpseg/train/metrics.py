"""The competition metric as a torchmetrics ``Metric``: global kelp Dice over every pixel of the epoch.

The counts (tp, fp, fn, tn) are summed over all batches (and, under DDP, over all processes with
``dist_reduce_fx="sum"``) and the scores are computed once from the totals, so the result is the
Dice of the whole validation set, not the mean of per-batch or per-tile Dice.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from kelpseg.evaluate.metrics import scores_from_counts

METRIC_NAMES = ("dice", "iou", "precision", "recall", "macro_dice")


class KelpDiceMetric(Metric):
    """Accumulates kelp confusion counts; ``compute()`` -> {dice, iou, precision, recall, macro_dice}.

    ``update(probs, target, valid=None)``: ``probs`` are kelp probabilities in [0, 1] (any shape),
    thresholded at ``threshold`` (``p >= t`` is kelp); ``target`` is binary with the same number of
    elements; ``valid`` optionally marks the pixels to count.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    tn: torch.Tensor

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        if probs.numel() != target.numel():
            raise ValueError(
                f"probabilities {tuple(probs.shape)} and target {tuple(target.shape)} differ in size"
            )
        pred = (probs.detach() >= self.threshold).reshape(-1)
        true = target.detach().reshape(-1) > 0
        if valid is not None:
            keep = valid.reshape(-1).bool()
            pred, true = pred[keep], true[keep]
        tp = (pred & true).sum()
        n_pred = pred.sum()
        n_true = true.sum()
        self.tp += tp
        self.fp += n_pred - tp
        self.fn += n_true - tp
        self.tn += pred.numel() - n_pred - n_true + tp

    def compute(self) -> dict[str, torch.Tensor]:
        scores = scores_from_counts(int(self.tp), int(self.fp), int(self.fn), int(self.tn))
        return {name: torch.tensor(scores[name], dtype=torch.float32) for name in METRIC_NAMES}
