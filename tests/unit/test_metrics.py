import numpy as np
import pytest

from kelpseg.evaluate.metrics import ConfusionCounts, kelp_dice, scores_from_counts


def test_hand_computed_counts() -> None:
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    target = np.array([[1, 0, 0], [0, 1, 1]])
    c = ConfusionCounts.from_arrays(pred, target)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 2)
    s = c.scores()
    assert s["dice"] == pytest.approx(4 / 6)
    assert s["iou"] == pytest.approx(2 / 4)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["macro_dice"] == pytest.approx((4 / 6 + 4 / 6) / 2)


def test_global_dice_is_not_mean_of_tiles() -> None:
    # tile 1: perfect on 1 pixel; tile 2: 0 of 9 kelp pixels found.
    p1, t1 = np.array([1, 0]), np.array([1, 0])
    p2, t2 = np.zeros(9), np.ones(9)
    total = ConfusionCounts.from_arrays(p1, t1) + ConfusionCounts.from_arrays(p2, t2)
    assert total.scores()["dice"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 9))
    assert kelp_dice(np.concatenate([p1, p2]), np.concatenate([t1, t2])) == pytest.approx(2 / 11)


def test_empty_cases() -> None:
    assert scores_from_counts(0, 0, 0, 100)["dice"] == 1.0
    assert scores_from_counts(0, 0, 5, 100)["dice"] == 0.0
    assert scores_from_counts(0, 0, 5, 100)["precision"] == 0.0
    assert scores_from_counts(0, 3, 0, 100)["recall"] == 1.0
    assert scores_from_counts(0, 3, 0, 100)["dice"] == 0.0


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        ConfusionCounts.from_arrays(np.zeros(3), np.zeros(4))
