"""Test-time augmentation over the 8 symmetries of the square (the dihedral group D4).

For every transform ``g``: ``p_g = g⁻¹(sigmoid(model(g(x))))``; the ``p_g`` are then merged
per pixel (mean by default). Merging happens on probabilities, not on raw logits: the
reference merged logits, so its geometric-mean and temperature-sharpened merges took roots
and powers of negative numbers and collapsed (val Dice 0.16 and NaN). A mean of probabilities
is what "average the augmented predictions" means, and min/max/gmean are all well defined on
[0, 1].

The reference's ttach composition (flips × 4 rotations) yields 16 variants, but they are the
8 elements of D4 each counted twice, so ``"d4"`` gives the same mean with half the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from kelpseg.errors import KelpsegError
from kelpseg.infer.choices import MERGE_MODES

Op = Callable[[Tensor], Tensor]


def _rot(k: int) -> Op:
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def _hflip(x: Tensor) -> Tensor:
    return torch.flip(x, dims=(-1,))


def _vflip(x: Tensor) -> Tensor:
    return torch.flip(x, dims=(-2,))


def _transpose(x: Tensor) -> Tensor:
    return x.transpose(-2, -1)


def _transverse(x: Tensor) -> Tensor:
    # reflection about the anti-diagonal
    return torch.flip(x, dims=(-2, -1)).transpose(-2, -1)


def _identity(x: Tensor) -> Tensor:
    return x


#: name -> (forward, inverse). Flips and transposes are their own inverse.
TRANSFORMS: dict[str, tuple[Op, Op]] = {
    "identity": (_identity, _identity),
    "hflip": (_hflip, _hflip),
    "vflip": (_vflip, _vflip),
    "rot90": (_rot(1), _rot(-1)),
    "rot180": (_rot(2), _rot(-2)),
    "rot270": (_rot(3), _rot(-3)),
    "transpose": (_transpose, _transpose),
    "transverse": (_transverse, _transverse),
}
#: Transforms that swap height and width (need a square input).
_SWAPS_AXES = {"rot90", "rot270", "transpose", "transverse"}
#: Named sets: all of D4, or the four flips (identity, h, v, both) the 3rd place used.
PRESETS: dict[str, tuple[str, ...]] = {
    "d4": tuple(TRANSFORMS),
    "flips": ("identity", "hflip", "vflip", "rot180"),
}
_EPS = 1e-7


def resolve_transforms(transforms: str | Sequence[str]) -> tuple[str, ...]:
    """A preset name (``"d4"``, ``"flips"``) or a list of transform names -> validated tuple."""
    if isinstance(transforms, str):
        if transforms in PRESETS:
            return PRESETS[transforms]
        transforms = [t.strip() for t in transforms.split(",") if t.strip()]
    names = tuple(transforms)
    unknown = [t for t in names if t not in TRANSFORMS]
    if unknown or not names:
        raise KelpsegError(
            f"unknown TTA transform(s) {unknown}; choose from {list(TRANSFORMS)} or a preset {list(PRESETS)}"
        )
    if len(set(names)) != len(names):
        raise KelpsegError(f"TTA transforms repeated: {list(names)}")
    return names


@torch.no_grad()
def predict_with_tta(
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    transforms: str | Sequence[str] = "d4",
    merge: str = "mean",
) -> Tensor:
    """Kelp probabilities (N, 1, H, W) merged over geometric transforms of ``x`` (N, C, H, W).

    ``model`` maps a batch to kelp logits (N, 1, H, W). Memory stays at one extra batch: the
    merge is a running sum / max / min / log-sum.
    """
    names = resolve_transforms(transforms)
    if merge not in MERGE_MODES:
        raise KelpsegError(f"unknown TTA merge mode {merge!r}; choose from {list(MERGE_MODES)}")
    if x.shape[-1] != x.shape[-2] and _SWAPS_AXES.intersection(names):
        raise KelpsegError(
            f"TTA with {sorted(_SWAPS_AXES.intersection(names))} needs square inputs, got {x.shape}"
        )
    merged: Tensor | None = None
    for name in names:
        forward, inverse = TRANSFORMS[name]
        prob = inverse(torch.sigmoid(model(forward(x)).float()))
        if merge == "gmean":
            prob = torch.log(prob.clamp_min(_EPS))
        if merged is None:
            merged = prob.clone()
        elif merge in ("mean", "gmean"):
            merged += prob
        elif merge == "max":
            merged = torch.maximum(merged, prob)
        else:
            merged = torch.minimum(merged, prob)
    assert merged is not None
    if merge == "mean":
        merged /= len(names)
    elif merge == "gmean":
        merged = torch.exp(merged / len(names))
    return merged
