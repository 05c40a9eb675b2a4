"""BatchTransform (indices, NaN filling, normalisation, padding/resizing) and exact augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kelpseg.bands import BAND_INDEX, BANDS, TILE_SIZE
from kelpseg.train.transforms import (
    DIHEDRAL,
    BandStatsError,
    BatchTransform,
    augment,
    pad_amounts,
    per_sample_min_max,
    per_sample_quantiles,
)

NAN = float("nan")


def stats(**channels: dict[str, float]) -> dict[str, dict[str, float]]:
    """Identity-like stats for every band and index used here, with per-channel overrides."""
    base = {"min": -10.0, "max": 10.0, "mean": 0.0, "std": 1.0, "q01": -5.0, "q99": 5.0}
    names = [*BANDS, "NDVI", "DEMWM", "NDWI"]
    table = {name: dict(base) for name in names}
    for name, values in channels.items():
        table[name].update(values)
    return table


def raw_batch(n: int = 1, **bands: float) -> torch.Tensor:
    """(n, 7, 350, 350) constant raw bands (QA 0, DEM -1 = water unless given)."""
    values = {"SWIR": 100.0, "NIR": 3000.0, "R": 1000.0, "G": 800.0, "B": 600.0, "QA": 0.0, "DEM": -1.0}
    values.update(bands)
    x = torch.empty(n, len(BANDS), TILE_SIZE, TILE_SIZE)
    for name, value in values.items():
        x[:, BAND_INDEX[name]] = value
    return x


def make(table: dict, **kw) -> BatchTransform:
    kw.setdefault("image_size", TILE_SIZE)
    kw.setdefault("mask_using_qa", False)
    kw.setdefault("mask_using_water_mask", False)
    return BatchTransform(table, **kw)


# ---- indices and masking ------------------------------------------------------------------------


def test_ndvi_channel_equals_hand_computed_value() -> None:
    # NDVI = (3000 - 1000) / (3000 + 1000) = 0.5; min-max on [-1, 1] -> (0.5 + 1) / 2 = 0.75
    table = stats(NDVI={"min": -1.0, "max": 1.0})
    t = make(table, bands=["NIR"], spectral_indices=["NDVI"], normalization_strategy="min-max")
    x = raw_batch()
    x[0, BAND_INDEX["NIR"], 0, 0] = 1000.0  # NDVI 0 there -> 0.5
    out = t(x)
    assert out.shape == (1, 2, TILE_SIZE, TILE_SIZE)
    assert t.channel_names == ["NIR", "NDVI"]
    assert out[0, 1, 5, 5].item() == pytest.approx(0.75, abs=1e-6)
    assert out[0, 1, 0, 0].item() == pytest.approx(0.5, abs=1e-6)


def test_qa_and_water_masking_then_nan_fill_gives_channel_min() -> None:
    table = stats(NDVI={"min": -1.0, "max": 1.0}, DEM={"min": -20.0, "max": 80.0})
    t = make(
        table,
        bands=["DEM"],
        spectral_indices=["DEMWM", "NDVI"],
        normalization_strategy="min-max",
        mask_using_qa=True,
        mask_using_water_mask=True,
    )
    x = raw_batch()
    x[0, BAND_INDEX["QA"], 10, 10] = 1.0  # cloud -> NDVI masked
    x[0, BAND_INDEX["DEM"], 20, 20] = 30.0  # land -> NDVI masked
    x[0, BAND_INDEX["DEM"], 30, 30] = NAN  # DEM nodata: water, NDVI kept; DEM itself -> its min
    out = t(x)
    ndvi = out[0, 2]
    assert ndvi[10, 10].item() == 0.0  # NaN -> stats min (-1) -> 0 after min-max
    assert ndvi[20, 20].item() == 0.0
    assert ndvi[30, 30].item() == pytest.approx(0.75, abs=1e-6)
    assert ndvi[0, 0].item() == pytest.approx(0.75, abs=1e-6)
    dem = out[0, 0]
    assert dem[30, 30].item() == 0.0  # NaN DEM -> min -20 -> 0
    assert dem[20, 20].item() == pytest.approx((30 + 20) / 100, abs=1e-6)
    assert torch.isfinite(out).all()


def test_positive_infinity_becomes_channel_max_and_negative_the_min() -> None:
    t = make(
        stats(R={"min": 0.0, "max": 4.0}), bands=["R"], spectral_indices=[], normalization_strategy="min-max"
    )
    x = raw_batch(R=2.0)
    x[0, BAND_INDEX["R"], 0, 0] = float("inf")
    x[0, BAND_INDEX["R"], 0, 1] = float("-inf")
    out = t(x)[0, 0]
    assert out[0, 0].item() == 1.0
    assert out[0, 1].item() == 0.0
    assert out[5, 5].item() == 0.5


def test_fill_with_zero_option_replaces_missing_pixels_by_zero() -> None:
    t = make(
        stats(R={"min": -100.0, "max": 100.0}),
        bands=["R"],
        spectral_indices=[],
        normalization_strategy="min-max",
        fill_missing_pixels_with_nan=False,
    )
    x = raw_batch(R=50.0)
    x[0, BAND_INDEX["R"], 3, 3] = NAN
    out = t(x)[0, 0]
    assert out[3, 3].item() == 0.5  # 0 -> (0 + 100) / 200
    assert out[0, 0].item() == 0.75


# ---- normalisation ------------------------------------------------------------------------------


def test_quantile_normalisation_clamps_and_rescales_exactly() -> None:
    t = make(stats(R={"q01": 1000.0, "q99": 3000.0}), bands=["R"], spectral_indices=[])
    x = raw_batch(R=0.0)
    row = x[0, BAND_INDEX["R"], 0]
    row[:5] = torch.tensor([500.0, 1500.0, 2000.0, 3000.0, 4000.0])
    out = t(x)[0, 0, 0, :5]
    assert out.tolist() == [0.0, 0.25, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("strategy", ["quantile", "min-max"])
def test_fused_normalise_and_pad_is_bit_identical_to_the_steps(strategy: str) -> None:
    table = stats(R={"q01": 900.0, "q99": 1100.0, "min": 0.0, "max": 5000.0}, NDVI={"q01": -0.2, "q99": 0.9})
    t = make(table, bands=["R", "G", "QA"], spectral_indices=["NDVI"], normalization_strategy=strategy)
    t.image_size = 352
    assert t._fused
    gen = torch.Generator().manual_seed(0)
    x = raw_batch(2) + 400 * torch.randn(2, len(BANDS), TILE_SIZE, TILE_SIZE, generator=gen)
    x[0, BAND_INDEX["R"], :3, :3] = NAN
    x[0, BAND_INDEX["R"], 3, :3] = float("inf")
    x[1, BAND_INDEX["G"], 4, :3] = float("-inf")
    x[1, BAND_INDEX["NIR"], 5:9, :] = NAN  # NaN NDVI
    fused = t(x)
    steps = t.resize(t.normalize(t.features(x)))
    assert fused.shape == (2, 4, 352, 352)
    assert torch.equal(fused, steps)
    assert fused[0, 0, 1, 1].item() == 0.0 and fused[0, 0, 4, 1].item() == 1.0  # NaN -> low, +inf -> high


def test_normalisation_is_not_fused_when_stats_are_out_of_order() -> None:
    # a NaN is filled with min before clamping: with min > q01 it does not land on 0
    t = make(stats(R={"min": 2.0, "q01": 1.0, "q99": 3.0}), bands=["R"], spectral_indices=[])
    assert not t._fused
    x = raw_batch(R=2.0)
    x[0, BAND_INDEX["R"], 0, 0] = NAN
    assert t(x)[0, 0, 0, 0].item() == 0.5
    assert not make(stats(), bands=["R"], spectral_indices=[], normalization_strategy="z-score")._fused


def test_z_score_uses_mean_and_std() -> None:
    t = make(
        stats(R={"mean": 2000.0, "std": 500.0}),
        bands=["R"],
        spectral_indices=[],
        normalization_strategy="z-score",
    )
    x = raw_batch(R=1500.0)
    x[0, BAND_INDEX["R"], 0, 0] = 3000.0
    x[0, BAND_INDEX["R"], 0, 1] = NAN  # -> min (-10) -> (-10 - 2000) / 500
    out = t(x)[0, 0]
    assert out[5, 5].item() == -1.0
    assert out[0, 0].item() == 2.0
    assert out[0, 1].item() == pytest.approx(-4.02)


def test_per_sample_min_max_per_image_and_channel_ignoring_nan() -> None:
    t = make(stats(), bands=["R", "G"], spectral_indices=[], normalization_strategy="per-sample-min-max")
    x = raw_batch(2)
    r, g = BAND_INDEX["R"], BAND_INDEX["G"]
    x[0, r] = 10.0
    x[0, r, 0, :3] = torch.tensor([0.0, 20.0, NAN])
    x[1, r] = 100.0
    x[1, r, 0, :2] = torch.tensor([50.0, 150.0])
    x[:, g] = 7.0  # constant channel -> 0
    out = t(x)
    assert out[0, 0, 0, :3].tolist() == [0.0, 1.0, 0.0]  # NaN -> the sample's min
    assert out[0, 0, 5, 5].item() == 0.5
    assert out[1, 0, 0, :2].tolist() == [0.0, 1.0]
    assert out[1, 0, 5, 5].item() == 0.5
    assert (out[:, 1] == 0).all()


def test_per_sample_quantiles_match_torch_quantile_on_finite_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 12, 12, generator=gen) * 100
    x[0, 0, :2] = NAN
    x[1, 1, 0, 0] = float("inf")
    x[2, 1] = NAN  # nothing finite -> 0
    lo, hi = per_sample_quantiles(x, (0.01, 0.99))
    assert lo.shape == hi.shape == (3, 2, 1, 1)
    for i in range(3):
        for c in range(2):
            values = x[i, c][torch.isfinite(x[i, c])]
            if values.numel() == 0:
                assert lo[i, c].item() == hi[i, c].item() == 0.0
                continue
            want = torch.quantile(values, torch.tensor([0.01, 0.99]))
            assert lo[i, c].item() == pytest.approx(want[0].item(), rel=1e-5)
            assert hi[i, c].item() == pytest.approx(want[1].item(), rel=1e-5)
    mn, mx = per_sample_min_max(x)
    assert mn[0, 0].item() == x[0, 0, 2:].min().item()
    assert mx[2, 1].item() == 0.0


def test_per_sample_quantile_strategy_output_in_unit_range() -> None:
    t = make(stats(), bands=["R"], spectral_indices=[], normalization_strategy="per-sample-quantile")
    x = raw_batch(R=0.0)
    x[0, BAND_INDEX["R"]] = torch.arange(TILE_SIZE * TILE_SIZE, dtype=torch.float32).view(
        TILE_SIZE, TILE_SIZE
    )
    out = t(x)[0, 0]
    n = TILE_SIZE * TILE_SIZE
    lo, hi = 0.01 * (n - 1), 0.99 * (n - 1)
    assert out.min().item() == 0.0 and out.max().item() == 1.0
    assert out.flatten()[n // 2].item() == pytest.approx((n // 2 - lo) / (hi - lo), rel=1e-5)


# ---- geometry -----------------------------------------------------------------------------------


def test_pad_to_352_adds_one_pixel_each_side_and_unpad_inverts() -> None:
    t = make(
        stats(R={"min": 0.0, "max": 2.0}),
        bands=["R"],
        spectral_indices=[],
        image_size=352,
        normalization_strategy="min-max",
    )
    x = raw_batch(2, R=1.0)
    out = t(x)
    assert out.shape == (2, 1, 352, 352)
    assert (out[:, :, 0, :] == 0).all() and (out[:, :, -1, :] == 0).all()
    assert (out[:, :, :, 0] == 0).all() and (out[:, :, :, -1] == 0).all()
    assert (out[:, :, 1:351, 1:351] == 0.5).all()
    pred = torch.randn(2, 1, TILE_SIZE, TILE_SIZE)
    padded = torch.nn.functional.pad(pred, (1, 1, 1, 1))
    assert torch.equal(t.unpad(padded), pred)
    mask = torch.randint(0, 2, (2, TILE_SIZE, TILE_SIZE), dtype=torch.uint8)
    pm = t.pad_mask(mask)
    assert pm.shape == (2, 352, 352) and pm.dtype == torch.uint8
    assert torch.equal(t.unpad(pm), mask)


def test_odd_padding_puts_the_extra_pixel_at_the_end() -> None:
    assert pad_amounts(350, 352) == (1, 1)
    assert pad_amounts(350, 353) == (1, 2)
    t = make(stats(), bands=["R"], spectral_indices=[], image_size=353)
    mask = torch.ones(1, TILE_SIZE, TILE_SIZE, dtype=torch.uint8)
    pm = t.pad_mask(mask)
    assert pm.shape == (1, 353, 353)
    assert pm[0, 1:351, 1:351].all() and pm.sum().item() == TILE_SIZE * TILE_SIZE
    assert torch.equal(t.unpad(pm), mask)


def test_resize_strategy_shapes_and_nearest_mask() -> None:
    t = make(
        stats(),
        bands=["R", "G"],
        spectral_indices=["NDVI"],
        image_size=256,
        resize_strategy="resize",
        interpolation="bilinear",
    )
    out = t(raw_batch(2))
    assert out.shape == (2, 3, 256, 256)
    mask = torch.zeros(2, TILE_SIZE, TILE_SIZE, dtype=torch.uint8)
    mask[:, 100:200, 50:60] = 1
    rm = t.pad_mask(mask)
    assert rm.shape == (2, 256, 256) and rm.dtype == torch.uint8
    assert set(rm.unique().tolist()) == {0, 1}
    assert t.unpad(torch.zeros(2, 1, 256, 256)).shape == (2, 1, TILE_SIZE, TILE_SIZE)


def test_channel_order_follows_configured_bands() -> None:
    # z-score with mean 0 / std 1 is the identity, so raw values come through unchanged
    t = make(stats(), bands=["B", "SWIR", "R"], spectral_indices=["NDVI"], normalization_strategy="z-score")
    out = t(raw_batch())
    assert t.in_channels == 4
    assert out[0, :, 7, 7].tolist() == pytest.approx([600.0, 100.0, 1000.0, 0.5])


def test_stats_are_buffers_saved_in_state_dict_and_from_config() -> None:
    config = SimpleNamespace(
        bands=["R", "NIR"],
        spectral_indices=["NDVI"],
        image_size=352,
        resize_strategy="pad",
        interpolation="nearest",
        normalization_strategy="quantile",
        fill_missing_pixels_with_nan=True,
        mask_using_qa=False,
        mask_using_water_mask=False,
    )
    t = BatchTransform.from_config(config, {"channels": stats(NDVI={"q01": -0.25})})
    state = t.state_dict()
    assert state["stat_q01"].flatten().tolist() == [-5.0, -5.0, -0.25]
    assert {f"stat_{k}" for k in ("min", "max", "mean", "std", "q01", "q99")} <= set(state)
    assert t(raw_batch()).shape == (1, 3, 352, 352)


def test_missing_channel_in_stats_is_a_clear_error() -> None:
    table = stats()
    del table["NDVI"]
    with pytest.raises(BandStatsError, match="no channel 'NDVI'"):
        make(table, bands=["R"], spectral_indices=["NDVI"])


def test_bad_input_shape_is_rejected() -> None:
    t = make(stats(), bands=["R"], spectral_indices=[])
    with pytest.raises(ValueError, match=r"\(N, 7, H, W\)"):
        t(torch.zeros(1, 3, TILE_SIZE, TILE_SIZE))


# ---- augmentation -------------------------------------------------------------------------------


def _symmetries(t: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for flip, k in DIHEDRAL:
        y = torch.flip(t, dims=(-1,)) if flip else t
        out.append(torch.rot90(y, k, dims=(-2, -1)))
    return out


def test_augment_applies_the_same_exact_symmetry_to_image_and_mask() -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(32, 3, 8, 8, generator=gen)
    mask = (image[:, 0] > 0).to(torch.uint8)
    out_img, out_mask = augment(image, mask, torch.Generator().manual_seed(7))
    assert out_img.shape == image.shape and out_mask.dtype == torch.uint8
    assert torch.equal(out_mask, (out_img[:, 0] > 0).to(torch.uint8))
    used = set()
    for i in range(32):
        matches = [j for j, s in enumerate(_symmetries(image[i])) if torch.equal(s, out_img[i])]
        assert matches, f"sample {i} is not an exact flip/rotation of its input"
        used.add(matches[0])
    assert len(used) > 4  # several different symmetries were drawn


def test_augment_is_deterministic_given_a_seeded_generator() -> None:
    image = torch.randn(8, 2, 6, 6)
    mask = (image[:, 0] > 0).to(torch.uint8)
    a = augment(image, mask, torch.Generator().manual_seed(3))
    b = augment(image, mask, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_random_crop_takes_the_same_window_for_image_and_mask() -> None:
    gen = torch.Generator().manual_seed(2)
    image = torch.randn(16, 2, 20, 20, generator=gen)
    image[:, 1] = torch.arange(400, dtype=torch.float32).view(20, 20)  # position code
    mask = (image[:, 0] > 0).to(torch.uint8).unsqueeze(1)
    out_img, out_mask = augment(image, mask, torch.Generator().manual_seed(5), crop_size=8)
    assert out_img.shape == (16, 2, 8, 8) and out_mask.shape == (16, 1, 8, 8)
    assert torch.equal(out_mask[:, 0], (out_img[:, 0] > 0).to(torch.uint8))
    for i in range(16):  # the window is a contiguous 8x8 block of the original
        codes = out_img[i, 1]
        rows, cols = (codes // 20).long(), (codes % 20).long()
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        assert torch.equal(
            out_img[i, 0].flatten().sort().values, image[i, 0][rows, cols].flatten().sort().values
        )


def test_kelp_centred_crops_hold_the_kelp_pixel_and_stay_inside_the_tile() -> None:
    from kelpseg.train.transforms import random_crop

    n, size, crop = 64, 40, 16
    image = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size).repeat(n, 1, 1, 1)
    mask = torch.zeros(n, size, size, dtype=torch.uint8)
    spots = [(0, 0), (39, 39), (20, 3), (5, 30)]  # corners and edges: windows must be clamped
    for i in range(n):
        mask[i, spots[i % 4][0], spots[i % 4][1]] = 1
    mask[3::8] = 0  # some samples hold no kelp: they keep their uniform window
    gen = torch.Generator().manual_seed(1)
    out_img, out_mask = random_crop(image, mask, crop, gen, kelp_probability=1.0)
    assert out_img.shape == (n, 1, crop, crop) and out_mask.shape == (n, crop, crop)
    for i in range(n):
        top, left = divmod(int(out_img[i, 0, 0, 0]), size)  # the window's first pixel code
        assert 0 <= top <= size - crop and 0 <= left <= size - crop
        assert torch.equal(out_img[i, 0], image[i, 0, top : top + crop, left : left + crop])
        assert int(out_mask[i].sum()) == int(mask[i].sum())  # the kelp pixel is inside


def test_kelp_crop_probability_zero_gives_the_uniform_windows_and_bad_values_are_refused() -> None:
    from kelpseg.train.transforms import random_crop

    gen = torch.Generator().manual_seed(4)
    image = torch.randn(12, 3, 30, 30, generator=gen)
    mask = (image[:, 0] > 1).to(torch.uint8)
    plain = random_crop(image, mask, 8, torch.Generator().manual_seed(9))
    zero = random_crop(image, mask, 8, torch.Generator().manual_seed(9), kelp_probability=0.0)
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])
    half = random_crop(image, mask, 8, torch.Generator().manual_seed(9), kelp_probability=0.5)
    assert not torch.equal(plain[0], half[0])
    with pytest.raises(ValueError, match=r"kelp_probability must lie in \[0, 1\], got 1.5"):
        random_crop(image, mask, 8, kelp_probability=1.5)
