"""Loss registry: every loss runs and is finite; dice and bce match hand-computed values; weighted sums."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from kelpseg.train.config import TrainConfig
from kelpseg.train.losses import (
    LOSS_REGISTRY,
    LossConfigError,
    WeightedSumLoss,
    create_loss,
    loss_options,
    parse_loss_spec,
)

# Probabilities 0.5, 0.75, 0.25 and ~1 for target 1, 1, 0, 0.
LOGITS = torch.tensor([0.0, math.log(3.0), -math.log(3.0), 30.0]).view(1, 1, 2, 2)
TARGET = torch.tensor([1, 1, 0, 0], dtype=torch.uint8).view(1, 2, 2)


def _loss(spec: str, **options: float) -> torch.nn.Module:
    return create_loss(spec, **options)


@pytest.mark.parametrize("name", list(LOSS_REGISTRY))
def test_every_loss_runs_a_step_and_is_finite(name: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, requires_grad=True)
    target = (torch.rand(2, 16, 16) > 0.7).to(torch.uint8)
    loss = _loss(name)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # A perfect prediction scores lower than a random one.
    perfect = (target.float() * 2 - 1).unsqueeze(1) * 20
    assert _loss(name)(perfect, target) < loss


def test_dice_matches_hand_computation() -> None:
    intersection = 0.5 + 0.75
    total = (0.5 + 0.75 + 0.25 + 1.0) + 2.0
    expected = 1 - 2 * intersection / total
    assert _loss("dice")(LOGITS, TARGET).item() == pytest.approx(expected, abs=1e-6)
    # (N, 1, H, W) targets work as well.
    assert _loss("dice")(LOGITS, TARGET.unsqueeze(1)).item() == pytest.approx(expected, abs=1e-6)


def test_bce_matches_hand_computation_with_and_without_pos_weight() -> None:
    positives = math.log(2.0) + math.log(4 / 3)  # -log(0.5) - log(0.75)
    negatives = math.log(4 / 3) + 30.0  # -log(1 - 0.25) - log(1 - sigmoid(30))
    assert _loss("bce")(LOGITS, TARGET).item() == pytest.approx((positives + negatives) / 4, rel=1e-6)
    weighted = _loss("bce", bce_pos_weight=3.0)(LOGITS, TARGET).item()
    assert weighted == pytest.approx((3 * positives + negatives) / 4, rel=1e-6)


def test_weighted_sum_is_the_sum_of_its_terms() -> None:
    combined = _loss("dice+0.5*bce")
    assert isinstance(combined, WeightedSumLoss) and combined.names == ["dice", "bce"]
    expected = _loss("dice")(LOGITS, TARGET) + 0.5 * _loss("bce")(LOGITS, TARGET)
    assert combined(LOGITS, TARGET).item() == pytest.approx(expected.item(), rel=1e-6)
    scaled = _loss("2*jaccard")(LOGITS, TARGET).item()
    assert scaled == pytest.approx(2 * _loss("jaccard")(LOGITS, TARGET).item(), rel=1e-6)


def test_tversky_with_equal_weights_is_dice_and_focal_options_apply() -> None:
    dice = _loss("dice")(LOGITS, TARGET).item()
    assert _loss("tversky", tversky_alpha=0.5, tversky_beta=0.5)(LOGITS, TARGET).item() == pytest.approx(
        dice, abs=1e-6
    )
    fn_heavy = _loss("tversky", tversky_alpha=0.1, tversky_beta=0.9)(LOGITS, TARGET).item()
    assert fn_heavy != pytest.approx(dice, abs=1e-4)
    assert _loss("focal", focal_gamma=0.0)(LOGITS, TARGET).item() == pytest.approx(
        _loss("bce")(LOGITS, TARGET).item(), rel=1e-5
    )


def test_spec_parsing() -> None:
    assert parse_loss_spec("dice") == [(1.0, "dice")]
    assert parse_loss_spec("0.7*Dice + 0.3*focal") == [(0.7, "dice"), (0.3, "focal")]
    assert parse_loss_spec("dice+1e-1*bce") == [(1.0, "dice"), (0.1, "bce")]
    with pytest.raises(LossConfigError, match="unknown loss 'ce'; choose from dice, bce, focal"):
        parse_loss_spec("ce")
    with pytest.raises(LossConfigError, match=r"cannot read term '0\.5\*\*bce'"):
        parse_loss_spec("dice+0.5**bce")
    with pytest.raises(LossConfigError, match="appears more than once"):
        parse_loss_spec("dice+dice")


def test_loss_parameters_come_from_the_training_options() -> None:
    options = loss_options(TrainConfig(focal_gamma=0.0, bce_pos_weight=3.0).to_dict())
    assert options == {
        "bce_pos_weight": 3.0,
        "focal_gamma": 0.0,
        "focal_alpha": None,
        "tversky_alpha": 0.5,
        "tversky_beta": 0.5,
    }
    summed = create_loss("focal+bce", **options)
    expected = _loss("bce")(LOGITS, TARGET) + _loss("bce", bce_pos_weight=3.0)(LOGITS, TARGET)
    assert summed(LOGITS, TARGET).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(LossConfigError, match=r"loss 'focal' has no parameter\(s\) \['beta'\]"):
        create_loss("focal", focal_beta=1.0)
    assert isinstance(LossConfigError("x"), ValueError)  # pydantic reports it as a field error


def test_losses_and_models_do_not_import_the_training_config() -> None:
    code = (
        "import sys, kelpseg.train.losses, kelpseg.train.models, kelpseg.train.optim; "
        "print('kelpseg.train.config' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
