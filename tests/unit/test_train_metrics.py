"""KelpDiceMetric: global counts over batches (not the mean of per-batch Dice), thresholds, reset."""

from __future__ import annotations

import pytest
import torch

from kelpseg.evaluate.metrics import scores_from_counts
from kelpseg.train.metrics import KelpDiceMetric


def test_global_dice_over_two_batches() -> None:
    metric = KelpDiceMetric(threshold=0.5)
    # Batch 1: pred 4 kelp pixels, truth 2, overlap 2 -> tp 2, fp 2, fn 0 (batch dice 4/6).
    p1 = torch.tensor([[0.9, 0.8, 0.6, 0.7, 0.1, 0.2]])
    t1 = torch.tensor([[1, 1, 0, 0, 0, 0]], dtype=torch.uint8)
    # Batch 2: pred 1, truth 6, overlap 1 -> tp 1, fp 0, fn 5 (batch dice 2/7).
    p2 = torch.tensor([[0.95, 0.4, 0.3, 0.2, 0.1, 0.49]])
    t2 = torch.tensor([[1, 1, 1, 1, 1, 1]], dtype=torch.uint8)
    metric.update(p1, t1)
    metric.update(p2, t2)
    scores = metric.compute()
    # Global: tp 3, fp 2, fn 5, tn 2 -> dice 6 / 13, not the mean of 4/6 and 2/7 (0.476).
    assert scores["dice"].item() == pytest.approx(6 / 13)
    assert scores["dice"].item() != pytest.approx((4 / 6 + 2 / 7) / 2, abs=1e-3)
    assert scores["iou"].item() == pytest.approx(3 / 10)
    assert scores["precision"].item() == pytest.approx(3 / 5)
    assert scores["recall"].item() == pytest.approx(3 / 8)
    expected = scores_from_counts(3, 2, 5, 2)
    for key, value in expected.items():
        assert scores[key].item() == pytest.approx(value)
    assert (metric.tp.item(), metric.fp.item(), metric.fn.item(), metric.tn.item()) == (3, 2, 5, 2)


def test_threshold_valid_mask_and_reset() -> None:
    probs = torch.tensor([0.3, 0.45, 0.6, 0.9])
    target = torch.tensor([1, 1, 0, 1])
    metric = KelpDiceMetric(threshold=0.4)
    metric.update(probs, target)
    assert (metric.tp.item(), metric.fp.item(), metric.fn.item(), metric.tn.item()) == (2, 1, 1, 0)
    metric.reset()
    metric.update(probs, target, valid=torch.tensor([False, True, False, True]))
    assert metric.compute()["dice"].item() == pytest.approx(1.0)
    empty = KelpDiceMetric()
    empty.update(torch.zeros(4), torch.zeros(4))
    assert empty.compute()["dice"].item() == 1.0  # nothing to find, nothing found
    with pytest.raises(ValueError, match="threshold must be in"):
        KelpDiceMetric(threshold=1.0)
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(torch.zeros(3), torch.zeros(4))


def test_states_are_summed_across_processes() -> None:
    """The DDP reduction is a sum of counts: merging two processes' states adds them."""
    metric = KelpDiceMetric()
    assert all(metric._reductions[name] is not None for name in ("tp", "fp", "fn", "tn"))
    metric.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 1]))
    other = KelpDiceMetric()
    other.update(torch.tensor([0.9, 0.9]), torch.tensor([0, 1]))
    metric.merge_state(other)
    assert (metric.tp.item(), metric.fp.item(), metric.fn.item(), metric.tn.item()) == (2, 1, 1, 0)
    assert metric.compute()["dice"].item() == pytest.approx(4 / 6)
