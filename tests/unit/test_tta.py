"""TTA over the dihedral group: exact inverses, merging on probabilities."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kelpseg.errors import KelpsegError
from kelpseg.infer.tta import PRESETS, TRANSFORMS, predict_with_tta, resolve_transforms


def test_inverses_and_eight_distinct_transforms() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    images = []
    for name, (fwd, inv) in TRANSFORMS.items():
        assert torch.equal(inv(fwd(x)), x), name
        images.append(fwd(x))
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8
    # spot checks of the geometry on a 2x2 [[0, 1], [2, 3]]
    small = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert TRANSFORMS["hflip"][0](small).tolist() == [[1, 0], [3, 2]]
    assert TRANSFORMS["vflip"][0](small).tolist() == [[2, 3], [0, 1]]
    assert TRANSFORMS["transpose"][0](small).tolist() == [[0, 2], [1, 3]]
    assert TRANSFORMS["transverse"][0](small).tolist() == [[3, 1], [2, 0]]


def test_equivariant_model_is_unchanged_by_tta() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 1, kernel_size=1).eval()
    x = torch.randn(3, 5, 16, 16)
    plain = torch.sigmoid(conv(x))
    for merge in ("max", "min"):
        assert torch.equal(predict_with_tta(conv, x, merge=merge), plain)
    for merge in ("mean", "gmean"):
        assert torch.allclose(predict_with_tta(conv, x, merge=merge), plain, atol=1e-6)
    assert torch.equal(predict_with_tta(conv, x, transforms=["identity"]), plain)


class FixedLogits(nn.Module):
    """Ignores the input's values: logits depend only on the pixel position."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], 1, *self.logits.shape[-2:]) + 0 * x[:, :1]


def test_non_equivariant_model_matches_hand_computed_merge() -> None:
    p = torch.tensor([[0.1, 0.2], [0.3, 0.8]])
    model = FixedLogits(torch.logit(p)[None, None])
    x = torch.zeros(1, 2, 2, 2)
    # identity + hflip: each pixel averages with its left/right mirror
    out = predict_with_tta(model, x, transforms=("identity", "hflip"))
    assert torch.allclose(out[0, 0], torch.tensor([[0.15, 0.15], [0.55, 0.55]]), atol=1e-6)
    # identity + vflip, max merge
    out = predict_with_tta(model, x, transforms=("identity", "vflip"), merge="max")
    assert torch.allclose(out[0, 0], torch.tensor([[0.3, 0.8], [0.3, 0.8]]), atol=1e-6)
    # rot90 alone: model sees rotated input, output rotated back -> rot90^-1 of p
    out = predict_with_tta(model, x, transforms=("rot90",))
    assert torch.allclose(out[0, 0], torch.rot90(p, -1), atol=1e-6)
    # all of D4 moves every pixel over all four corners twice: the mean is the mean of p
    out = predict_with_tta(model, x, transforms="d4")
    assert torch.allclose(out, torch.full_like(out, p.mean().item()), atol=1e-6)
    # geometric mean of probabilities, defined (the reference's gmean of logits was not)
    out = predict_with_tta(model, x, transforms=("identity", "hflip"), merge="gmean")
    assert out[0, 0, 0, 0].item() == pytest.approx((0.1 * 0.2) ** 0.5, rel=1e-5)


def test_names_presets_and_errors() -> None:
    assert resolve_transforms("flips") == PRESETS["flips"]
    assert resolve_transforms("identity,hflip") == ("identity", "hflip")
    assert len(resolve_transforms("d4")) == 8
    with pytest.raises(KelpsegError, match="unknown TTA transform"):
        resolve_transforms(["identity", "shear"])
    with pytest.raises(KelpsegError, match="merge mode"):
        predict_with_tta(nn.Identity(), torch.zeros(1, 1, 2, 2), merge="tsharpen")
    with pytest.raises(KelpsegError, match="square"):
        predict_with_tta(nn.Identity(), torch.zeros(1, 1, 2, 3), transforms=("rot90",))
    # flips alone work on non-square inputs
    out = predict_with_tta(nn.Identity(), torch.zeros(1, 1, 2, 3), transforms="flips")
    assert torch.allclose(out, torch.full((1, 1, 2, 3), 0.5))
