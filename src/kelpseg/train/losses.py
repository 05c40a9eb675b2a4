"""Loss registry for the single kelp logit, and weighted sums written as strings.

Every loss takes ``logits`` (N, 1, H, W) and a binary ``target`` (N, H, W) or (N, 1, H, W)
(any dtype; non-zero is kelp) and returns a scalar. The smp losses are used in binary mode
(``from_logits``: sigmoid inside), which is what a 1-logit head needs; the reference used their
multiclass (2-logit softmax) variants.

A loss spec is a name or a weighted sum of names: ``"dice"``, ``"dice+0.5*bce"``,
``"0.7*dice + 0.3*focal"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from kelpseg.errors import KelpsegError

if TYPE_CHECKING:
    from kelpseg.train.config import TrainConfig


class LossConfigError(KelpsegError):
    """Unknown loss name or malformed weighted-sum spec."""


def _smp_losses():  # imported lazily: smp pulls in timm and friends
    from segmentation_models_pytorch import losses

    return losses


class BCEWithLogits(nn.Module):
    """``BCEWithLogitsLoss`` that accepts (N, H, W) targets and an optional kelp ``pos_weight``."""

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        weight = torch.tensor([pos_weight]) if pos_weight is not None else None
        self.loss = nn.BCEWithLogitsLoss(pos_weight=weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target.reshape(logits.shape).to(logits.dtype))


class _BinaryTarget(nn.Module):
    """Feed smp binary losses a float target shaped like the logits."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target.reshape(logits.shape).to(logits.dtype))


def _dice(config: TrainConfig) -> nn.Module:
    return _BinaryTarget(_smp_losses().DiceLoss(mode="binary", from_logits=True))


def _jaccard(config: TrainConfig) -> nn.Module:
    return _BinaryTarget(_smp_losses().JaccardLoss(mode="binary", from_logits=True))


def _focal(config: TrainConfig) -> nn.Module:
    return _BinaryTarget(
        _smp_losses().FocalLoss(mode="binary", alpha=config.focal_alpha, gamma=config.focal_gamma)
    )


def _lovasz(config: TrainConfig) -> nn.Module:
    return _BinaryTarget(_smp_losses().LovaszLoss(mode="binary", from_logits=True))


def _tversky(config: TrainConfig) -> nn.Module:
    return _BinaryTarget(
        _smp_losses().TverskyLoss(
            mode="binary", from_logits=True, alpha=config.tversky_alpha, beta=config.tversky_beta
        )
    )


def _bce(config: TrainConfig) -> nn.Module:
    return BCEWithLogits(config.bce_pos_weight)


#: name -> factory(config) -> loss module (logits, target) -> scalar.
LOSS_REGISTRY: dict[str, Callable[[TrainConfig], nn.Module]] = {
    "dice": _dice,
    "bce": _bce,
    "focal": _focal,
    "jaccard": _jaccard,
    "lovasz": _lovasz,
    "tversky": _tversky,
}

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = re.compile(rf"^(?:(?P<w>{_NUMBER})\s*\*\s*)?(?P<name>[A-Za-z_]+)$")


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """``"dice+0.5*bce"`` -> ``[(1.0, "dice"), (0.5, "bce")]``; raises LossConfigError on bad input."""
    terms = [t.strip() for t in spec.split("+")]
    if not spec.strip() or any(not t for t in terms):
        raise LossConfigError(f"loss {spec!r}: expected a name or a sum like 'dice+0.5*bce'")
    parsed: list[tuple[float, str]] = []
    for term in terms:
        match = _TERM.match(term)
        if match is None:
            raise LossConfigError(
                f"loss {spec!r}: cannot read term {term!r}; write it as 'name' or 'weight*name'"
            )
        name = match["name"].lower()
        if name not in LOSS_REGISTRY:
            raise LossConfigError(
                f"loss {spec!r}: unknown loss {name!r}; choose from {', '.join(LOSS_REGISTRY)}"
            )
        parsed.append((float(match["w"]) if match["w"] else 1.0, name))
    names = [n for _, n in parsed]
    if len(set(names)) != len(names):
        raise LossConfigError(f"loss {spec!r}: a loss appears more than once")
    return parsed


class WeightedSumLoss(nn.Module):
    """Σ wᵢ·lossᵢ(logits, target)."""

    def __init__(self, terms: list[tuple[float, str, nn.Module]]) -> None:
        super().__init__()
        self.weights = [w for w, _, _ in terms]
        self.names = [n for _, n, _ in terms]
        self.losses = nn.ModuleList([m for _, _, m in terms])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros(())
        for weight, loss in zip(self.weights, self.losses, strict=True):
            total = total + weight * loss(logits, target)
        return total


def create_loss(config: TrainConfig) -> nn.Module:
    """The loss module named by ``config.loss`` (a single loss, or a WeightedSumLoss for sums)."""
    terms = parse_loss_spec(config.loss)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return LOSS_REGISTRY[terms[0][1]](config)
    return WeightedSumLoss([(w, n, LOSS_REGISTRY[n](config)) for w, n in terms])
