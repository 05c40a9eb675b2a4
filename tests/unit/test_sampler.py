"""Sampler weights (reference §3.8 with the documented fixes) and the weighted random sampler."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kelpseg.train.sampler import (
    DEFAULT_FLOOR,
    SamplerError,
    SamplerFactors,
    make_sampler,
    raw_weights,
    sampler_weights,
    sampler_weights_by_tile,
)


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tile_id": ["AA000001", "AA000002", "AA000003", "AA000004"],
            "has_kelp": [True, False, True, False],
            "kelp_pixels_pct": [0.1, 0.0, 0.3, 0.0],
            "qa_ok": [True, False, True, True],
            "qa_corrupted_pixels_pct": [0.0, 0.2, 0.0, 0.5],
            "water_pixels_pct": [0.5, 0.9, 0.2, 1.0],
            "almost_all_water": [False, True, False, True],
            "dem_nan_pixels_pct": [0.0, 0.1, 0.0, 0.0],
            "dem_zero_pixels_pct": [0.4, 0.8, 0.1, 1.0],
        }
    )


# Best-recipe factors (3, 0.2, 0, -1, 0.5, 0.25, -1), by hand:
# a: 3 + 0.2*0.9 - 1*1.0 + 0.5*0.5 + 0.25*1.0 - 1*0.6 = 2.08
# b: 0 + 0.2*1.0 - 1*0.8 + 0.5*0.1 + 0.25*0.9 - 1*0.2 = -0.525
# c: 3 + 0.2*0.7 - 1*1.0 + 0.5*0.8 + 0.25*1.0 - 1*0.9 = 1.89
# d: 0 + 0.2*1.0 - 1*0.5 + 0.5*0.0 + 0.25*1.0 - 1*0.0 = -0.05
RAW = np.array([2.08, -0.525, 1.89, -0.05])
LO, HI = -0.525, 2.08
SCALED = (RAW - LO) / (HI - LO)
EXPECTED = DEFAULT_FLOOR + (1 - DEFAULT_FLOOR) * SCALED


def test_raw_weights_match_hand_computed_sum() -> None:
    np.testing.assert_allclose(raw_weights(frame(), SamplerFactors()), RAW, atol=1e-12)


def test_weights_are_scaled_over_train_rows_with_a_floor() -> None:
    w = sampler_weights(frame(), SamplerFactors())
    np.testing.assert_allclose(w, EXPECTED, atol=1e-12)
    assert w.min() == pytest.approx(DEFAULT_FLOOR)  # the lightest tile can still be drawn
    assert w.max() == pytest.approx(1.0)


def test_almost_all_water_factor_uses_the_water_share_not_the_flag() -> None:
    only_water = {"has_kelp": 0, "kelp_pixels_pct": 0, "qa_corrupted_pixels_pct": 0}
    only_water |= {"dem_nan_pixels_pct": 0, "dem_zero_pixels_pct": 0, "almost_all_water": 2.0}
    np.testing.assert_allclose(raw_weights(frame(), only_water), 2.0 * (1 - np.array([0.5, 0.9, 0.2, 1.0])))


def test_non_train_rows_get_zero_and_do_not_change_the_scaling() -> None:
    f = frame()
    f["split_0"] = "train"
    extra = pd.DataFrame(
        {
            "tile_id": ["AA000005", "AA000006"],
            "has_kelp": [True, None],
            "kelp_pixels_pct": [0.0, None],
            "qa_ok": [True, True],
            "qa_corrupted_pixels_pct": [0.0, 0.0],
            "water_pixels_pct": [0.0, 0.0],
            "almost_all_water": [False, False],
            "dem_nan_pixels_pct": [1.0, 0.0],
            "dem_zero_pixels_pct": [1.0, 0.0],
            "split_0": ["val", "test"],  # a huge-weight val tile, a test tile without mask stats
        }
    )
    both = pd.concat([f, extra], ignore_index=True)
    w = sampler_weights(both, SamplerFactors(), split_column="split_0")
    np.testing.assert_allclose(w[:4], EXPECTED, atol=1e-12)
    assert w[4:].tolist() == [0.0, 0.0]


def test_weights_follow_tile_ids_when_the_frame_is_shuffled() -> None:
    f = frame()
    expected = dict(zip(f["tile_id"], EXPECTED, strict=True))
    shuffled = f.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert shuffled["tile_id"].tolist() != f["tile_id"].tolist()
    w = sampler_weights(shuffled, SamplerFactors())
    for tile_id, weight in zip(shuffled["tile_id"], w, strict=True):
        assert weight == pytest.approx(expected[tile_id])
    by_tile = sampler_weights_by_tile(shuffled, SamplerFactors())
    lookup = ["AA000003", "AA000001", "AA000004", "AA000002"]
    np.testing.assert_allclose(by_tile.loc[lookup].to_numpy(), [expected[t] for t in lookup])


def test_factors_from_config_attribute_names() -> None:
    config = SimpleNamespace(
        has_kelp_importance_factor=2.0,
        kelp_pixels_pct_importance_factor=0.5,
        qa_ok_importance_factor=0.5,
        qa_corrupted_pixels_pct_importance_factor=-0.5,
        almost_all_water_importance_factor=-1.0,
        dem_nan_pixels_pct_importance_factor=0.0,
        dem_zero_pixels_pct_importance_factor=-0.25,
    )
    f = SamplerFactors.from_config(config)
    assert f == SamplerFactors(2.0, 0.5, 0.5, -0.5, -1.0, 0.0, -0.25)
    # tile a by hand: 2 + 0.5*0.9 + 0.5*1 - 0.5*1 - 1*0.5 - 0.25*0.6 = 1.8
    assert raw_weights(frame(), config)[0] == pytest.approx(1.8)


def test_equal_weights_all_become_one() -> None:
    f = frame().iloc[[0, 0]].assign(tile_id=["X1", "X2"])
    assert sampler_weights(f, SamplerFactors()).tolist() == [1.0, 1.0]


def test_missing_column_and_missing_values_are_clear_errors() -> None:
    with pytest.raises(SamplerError, match="water_pixels_pct"):
        raw_weights(frame().drop(columns="water_pixels_pct"), SamplerFactors())
    # a zero factor does not need its column
    raw_weights(frame().drop(columns="qa_ok"), SamplerFactors())
    f = frame()
    f.loc[2, "kelp_pixels_pct"] = np.nan
    with pytest.raises(SamplerError, match=r"kelp_pixels_pct.*AA000003"):
        raw_weights(f, SamplerFactors())
    with pytest.raises(SamplerError, match="more than once"):
        sampler_weights_by_tile(pd.concat([frame(), frame()]), SamplerFactors())


def test_make_sampler_draws_with_replacement_proportional_to_weights() -> None:
    weights = np.array([0.0, 1.0, 3.0])
    sampler = make_sampler(weights, 4000, generator=torch.Generator().manual_seed(0))
    draws = np.array(list(sampler))
    assert len(draws) == 4000
    counts = np.bincount(draws, minlength=3)
    assert counts[0] == 0
    assert counts[2] / counts[1] == pytest.approx(3.0, rel=0.15)
    again = list(make_sampler(weights, 4000, generator=torch.Generator().manual_seed(0)))
    assert again == draws.tolist()
    with pytest.raises(ValueError, match="not all zero"):
        make_sampler(np.zeros(3), 10)
