"""Loss registry for the single kelp logit, and weighted sums written as strings.

Every loss takes ``logits`` (N, 1, H, W) and a binary ``target`` (N, H, W) or (N, 1, H, W)
(any dtype; non-zero is kelp) and returns a scalar. The smp losses are used in binary mode
(``from_logits``: sigmoid inside), which is what a 1-logit head needs; the reference used their
multiclass (2-logit softmax) variants.

A loss spec is a name or a weighted sum of names: ``"dice"``, ``"dice+0.5*bce"``,
``"0.7*dice + 0.3*focal"``.

A loss's parameters are keyword arguments of its factory; :func:`create_loss` takes them as
``<loss>_<parameter>`` (``focal_gamma``, ``bce_pos_weight``), the names of the training options,
and gives each term only its own.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from kelpseg.errors import UsageError


class LossConfigError(UsageError, ValueError):
    """Unknown loss name, malformed weighted-sum spec or unknown loss parameter."""


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


def dice_loss() -> nn.Module:
    return _BinaryTarget(_smp_losses().DiceLoss(mode="binary", from_logits=True))


def jaccard_loss() -> nn.Module:
    return _BinaryTarget(_smp_losses().JaccardLoss(mode="binary", from_logits=True))


def focal_loss(gamma: float = 2.0, alpha: float | None = None) -> nn.Module:
    return _BinaryTarget(_smp_losses().FocalLoss(mode="binary", alpha=alpha, gamma=gamma))


def lovasz_loss() -> nn.Module:
    return _BinaryTarget(_smp_losses().LovaszLoss(mode="binary", from_logits=True))


def tversky_loss(alpha: float = 0.5, beta: float = 0.5) -> nn.Module:
    return _BinaryTarget(_smp_losses().TverskyLoss(mode="binary", from_logits=True, alpha=alpha, beta=beta))


def bce_loss(pos_weight: float | None = None) -> nn.Module:
    return BCEWithLogits(pos_weight)


#: name -> factory(**parameters) -> loss module (logits, target) -> scalar.
LOSS_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "dice": dice_loss,
    "bce": bce_loss,
    "focal": focal_loss,
    "jaccard": jaccard_loss,
    "lovasz": lovasz_loss,
    "tversky": tversky_loss,
}


def loss_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``<loss>_<parameter>`` entries of ``values`` (e.g. the training options) for ``create_loss``."""
    return {k: v for k, v in values.items() if k.split("_", 1)[0] in LOSS_REGISTRY and "_" in k}


def _build(name: str, options: Mapping[str, Any]) -> nn.Module:
    factory = LOSS_REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    prefix = f"{name}_"
    kwargs = {k.removeprefix(prefix): v for k, v in options.items() if k.startswith(prefix)}
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise LossConfigError(
            f"loss {name!r} has no parameter(s) {unknown}; it takes {list(accepted) or 'none'}"
        )
    return factory(**kwargs)


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


def create_loss(spec: str, **options: Any) -> nn.Module:
    """The loss module of ``spec`` (a single loss, or a WeightedSumLoss for sums).

    ``options`` are ``<loss>_<parameter>`` values (``focal_gamma=1.5``); those of losses not in
    ``spec`` are ignored, an unknown parameter of a loss in it is an error.
    """
    terms = parse_loss_spec(spec)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return _build(terms[0][1], options)
    return WeightedSumLoss([(w, n, _build(n, options)) for w, n in terms])
