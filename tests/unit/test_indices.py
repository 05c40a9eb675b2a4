"""Spectral-index registry: hand-computed values, guarded maths, masking, numpy/torch parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kelpseg.bands import BANDS, band_positions
from kelpseg.errors import KelpsegError
from kelpseg.features.indices import (
    BEST_INDICES,
    EPS,
    INDEX_REGISTRY,
    REFERENCE_INDEX_NAMES,
    append_indices,
    compute_index,
    compute_indices,
    get_index,
    qa_ok_mask,
    validate_index_names,
    water_mask,
)

POS = band_positions(BANDS)
DEFAULTS = {"SWIR": 1000.0, "NIR": 2000.0, "R": 500.0, "G": 800.0, "B": 400.0, "QA": 0.0, "DEM": 0.0}


def stack(dtype: type = np.float32, **bands: float | list[float]) -> np.ndarray:
    """A (7, 1, W) stack in disk band order; bands not given take DEFAULTS."""
    width = max((len(v) for v in bands.values() if isinstance(v, list)), default=1)
    rows = [np.broadcast_to(np.asarray(bands.get(b, DEFAULTS[b]), dtype=np.float64), (width,)) for b in BANDS]
    return np.stack(rows)[:, None, :].astype(dtype)


def value(name: str, dtype: type = np.float64, **bands: float | list[float]) -> np.ndarray:
    return compute_index(name, stack(dtype, **bands), POS)[0]


def random_batch(seed: int = 0, shape: tuple[int, int, int] = (2, 16, 16)) -> np.ndarray:
    """Realistic raw DN (0..30000) with NaN nodata, exact zeros, QA 0/1 and DEM with NaN."""
    rng = np.random.default_rng(seed)
    n, h, w = shape
    x = rng.integers(0, 30_000, size=(n, 7, h, w)).astype(np.float32)
    spectral = x[:, :5]
    spectral[rng.random(spectral.shape) < 0.05] = np.nan
    spectral[rng.random(spectral.shape) < 0.05] = 0.0
    x[:, 5] = (rng.random((n, h, w)) < 0.2).astype(np.float32)
    x[:, 6] = rng.integers(-20, 100, size=(n, h, w))
    x[:, 6][rng.random((n, h, w)) < 0.2] = np.nan
    return x


# --- registry ------------------------------------------------------------------------------------------


def test_registry_holds_the_59_reference_indices_in_lookup_order_then_extras():
    names = list(INDEX_REGISTRY)
    assert len(REFERENCE_INDEX_NAMES) == 59
    assert names[:59] == list(REFERENCE_INDEX_NAMES)
    assert names[:5] == ["ATSAVI", "AFRI1600", "AVI", "ARVI", "BWDRVI"]
    assert names[58] == "WAVI"
    assert names.index("DEMWM") == 47
    for extra in ("IPVI_textbook", "NDWI_McFeeters", "MNDWI", "NDMI", "FAI", "WATERMASK", "VALIDMASK"):
        assert extra in names[59:]
        assert not INDEX_REGISTRY[extra].in_reference
    assert all(INDEX_REGISTRY[n].in_reference for n in REFERENCE_INDEX_NAMES)


def test_best_indices_are_registered():
    assert len(BEST_INDICES) == 17
    assert all(n in INDEX_REGISTRY for n in BEST_INDICES)


def test_binary_and_never_masked_channels():
    binary = {n for n, s in INDEX_REGISTRY.items() if s.binary}
    unmaskable = {n for n, s in INDEX_REGISTRY.items() if not s.maskable}
    assert binary == {"DEMWM", "NDVIWM", "NDWIWM", "WATERMASK", "VALIDMASK"}
    assert unmaskable == binary


def test_every_index_documents_its_formula_and_needs_known_bands():
    for name, spec in INDEX_REGISTRY.items():
        assert spec.name == name
        assert spec.doc and spec.func.__doc__.startswith(name)
        assert spec.needs and set(spec.needs) <= set(BANDS)
    for flagged in ("mCRIG", "MCARI", "MSRNirRed", "CHLA", "CYA"):
        assert "do not use" in INDEX_REGISTRY[flagged].doc
    assert "do not use" not in INDEX_REGISTRY["NDVI"].doc
    assert INDEX_REGISTRY["NDVI"].needs == ("NIR", "R")
    assert INDEX_REGISTRY["SABI"].needs == ("NIR", "R", "G", "B")


def test_unknown_index_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown spectral index 'NDVl'; did you mean .*NDVI"):
        get_index("NDVl")
    with pytest.raises(KelpsegError, match=r"did you mean .*mCRIG"):
        get_index("mcrig")
    with pytest.raises(ValueError, match="known indices: ATSAVI, AFRI1600"):
        get_index("zzzzzz")
    with pytest.raises(ValueError, match="unknown spectral index 'NDVl'"):
        compute_indices(stack(), POS, ["NDVI", "NDVl"])


def test_validate_index_names():
    assert validate_index_names(" NDVI, ATSAVI ,DEMWM,") == ["NDVI", "ATSAVI", "DEMWM"]
    assert validate_index_names(BEST_INDICES) == list(BEST_INDICES)
    with pytest.raises(ValueError, match="more than once: NDVI"):
        validate_index_names(["NDVI", "AVI", "NDVI"])
    with pytest.raises(ValueError, match="unknown spectral index 'FOO'"):
        validate_index_names("NDVI,FOO")


# --- hand-computed values (S=1000, N=2000, R=500, G=800, B=400 unless given) ---------------------------

HAND = [
    ("NDVI", {}, 1500 / 2500),
    (
        "ATSAVI",
        {},
        1.22 * (2000 - 1.22 * 500 - 0.03) / (1.22 * 2000 + 500 - 1.22 * 0.03 + 0.08 * (1 + 1.22**2)),
    ),
    ("AVI", {}, 2 * 2000 - 500),
    ("CI", {}, (500 - 400) / 500),
    ("ClGreen", {}, 2000 / 800 - 1),
    ("GBNDVI", {}, (2000 - 1200) / 3200),
    ("GVMI", {}, (2000.1 - 1000.02) / (2000.1 + 1000.02)),
    ("IPVI", {}, (2000 / 2500 / 2) * ((500 - 800) / 500 + 800 + 1)),  # = 0.4 · 800.4 = 320.16
    ("IPVI_textbook", {}, 2000 / 2500),
    ("KIVU", {}, (400 - 500) / 800),
    ("MCARI", {}, ((2000 - 500) - 0.2 * (2000 - 800)) * (2000 / 500)),
    ("MVI", {}, 2000 / 1000),
    ("NormNIR", {}, 2000 / 3300),
    ("PNDVI", {}, (2000 - 1700) / 3700),
    ("SABI", {}, 1500 / 1200),
    ("WDRVI", {}, (200 - 500) / (200 + 500)),
    ("mCRIG", {}, (1 / 400 - 1 / 800) * 2000),  # = 2.5
    ("CHLA", {}, 4.23 * ((800 / 65535) / (400 / 65535 + EPS)) ** 3.94),
    ("CYA", {}, (((800 / 65535) * (500 / 65535) + EPS) / (400 / 65535 + EPS)) ** 2.38),
    ("H", {"R": 3.0, "G": 2.0, "B": 1.0}, math.atan((6 - 2 - 1) / 30.5 * (2 - 1))),
    ("Kab1", {}, 1.67 - 3.94 * math.log(400) + 3.78 * math.log(800)),
    ("I", {}, (500 + 800 + 400) / 30.5),
    ("LogR", {}, math.log(2000 / 500)),
    ("TURB", {}, 8.93 * 2 - 6.39),
    ("CDOM", {}, 537 * math.exp(-2.93 * 800 / 500)),
    ("DOC", {}, 432 * math.exp(-2.24 * 800 / 500)),
    ("WATERCOLOR", {}, 25366 * math.exp(-4.53 * 800 / 500)),
    ("EVI", {}, 2.5 * 1500 / (2000 + 3000 - 3000 + 1)),
    ("EVI2", {}, 2.4 * 1500 / 2501),
    ("EVI22", {}, 2.5 * 1500 / (2000 + 1200 + 1)),
    ("ARVI", {}, -0.18 + 1.17 * 0.6),
    ("AFRI1600", {}, 2000 - 0.66 * 1000 / (2000 + 660)),
    ("CVI", {}, 2000 * 500 / 800**2),
    ("GARI", {}, (2000 - (800 - (400 - 500))) / (2000 - (800 + (400 - 500)))),
    ("NLI", {}, (2000**2 - 500) / (2000**2 + 500)),
    ("MSRNirRed", {}, (4 - 1) / math.sqrt(4 + 1)),
    ("MSAVI", {}, (4001 - math.sqrt(4001**2 - 8 * 1500)) / 2),
    ("TNDVI", {}, math.sqrt(0.6 + 0.5)),
    ("TVI", {}, math.sqrt((500 - 800) / 1300 + 0.5)),
    ("SQRTNIRR", {}, 2.0),
    ("VARIGreen", {}, (800 - 500) / (800 + 500 - 400)),
    ("SRGR", {}, 800 / 500),
    ("SRSWIRNIR", {}, 0.5),
    ("NDAVI", {}, 1600 / 2400),
    ("WAVI", {}, 1.5 * 1600 / 2400.5),
    ("NDWI", {}, (2000 - 800) / 2800),
    ("NDWI_McFeeters", {}, (800 - 2000) / 2800),
    ("MNDWI", {}, (800 - 1000) / 1800),
    ("NDMI", {}, 1000 / 3000),
    ("FAI", {}, 2000 - (500 + (1000 - 500) * 175 / 990)),
]


@pytest.mark.parametrize(("name", "bands", "expected"), HAND, ids=[h[0] for h in HAND])
def test_hand_computed_values(name, bands, expected):
    assert value(name, **bands)[0] == pytest.approx(expected, rel=1e-9)
    assert value(name, np.float32, **bands)[0] == pytest.approx(expected, rel=2e-5)


def test_ipvi_reference_differs_from_textbook():
    assert value("IPVI")[0] == pytest.approx(320.16, rel=1e-9)
    assert value("IPVI_textbook")[0] == pytest.approx(0.8, rel=1e-12)


def test_ndwi_sign_follows_the_reference_and_mcfeeters_is_its_negative():
    water = {"NIR": [300.0, 2000.0], "G": [900.0, 800.0]}  # water: G > N; vegetation: N > G
    ndwi, mcfeeters = value("NDWI", **water), value("NDWI_McFeeters", **water)
    assert ndwi[0] < 0 < ndwi[1]
    np.testing.assert_allclose(mcfeeters, -ndwi)
    np.testing.assert_allclose(value("NDWIWM", **water), [0.0, 1200 / 2800])


def test_evi_is_clamped_to_20000():
    # N + 6R − 7.5B + 1 == 1 in all three pixels
    out = value("EVI", NIR=[30000.0, 0.0, 1500.0], R=[0.0, 10000.0, 0.0], B=[4000.0, 8000.0, 200.0])
    np.testing.assert_allclose(out, [20000.0, -20000.0, 3750.0])


def test_demwm_is_clipped_elevation_zero_where_dem_missing():
    np.testing.assert_array_equal(value("DEMWM", DEM=[-5.0, 0.0, 12.5, np.nan]), [0.0, 0.0, 12.5, 0.0])


def test_mask_channels():
    np.testing.assert_array_equal(value("WATERMASK", DEM=[-5.0, 0.0, 12.5, np.nan]), [1, 1, 0, 1])
    valid = value("VALIDMASK", QA=[0.0, 1.0, 0.0, np.nan], SWIR=[1.0, 1.0, np.nan, 1.0])
    np.testing.assert_array_equal(valid, [1, 0, 0, 0])


def test_values_match_the_reference_epsilon_division_for_nonzero_denominators():
    x = random_batch(1).astype(np.float64)
    s, n, r, g, b = (x[:, i] for i in range(5))
    expected = {
        "NDVI": (n - r) / (n + r + EPS),
        "CI": (r - b) / (r + EPS),
        "ClGreen": n / (g + EPS) - 1,
        "SABI": (n - r) / (g + b + EPS),
        "KIVU": (b - r) / (g + EPS),
        "GVMI": ((n + 0.1) - (s + 0.02)) / ((n + 0.1) + (s + 0.02) + EPS),
        "IPVI": (n / (n + r + EPS) / 2) * (((r - g) / (r + EPS) + g) + 1 + EPS),
        "MCARI": ((n - r) - 0.2 * (n - g)) * (n / (r + EPS)),
        "CHLA": 4.23 * ((g / 65535) / (b / 65535 + EPS)) ** 3.94,
    }
    with np.errstate(all="ignore"):
        expected["mCRIG"] = (1 / b - 1 / g) * n
    for name, ref in expected.items():
        ours = compute_index(name, x, POS)
        ok = np.isfinite(ref) & np.isfinite(ours)
        assert ok.mean() > 0.7, name
        rtol = 1e-7 if name == "mCRIG" else 1e-12  # mCRIG had no ε: 1/(B + ε) vs 1/B
        np.testing.assert_allclose(ours[ok], ref[ok], rtol=rtol, err_msg=name)
        # where ours is unknown the reference was either NaN (nodata) or a zero-denominator artefact
        assert np.all(np.isnan(ours[~ok])), name


# --- guarded maths -------------------------------------------------------------------------------------

ZERO_DENOMINATOR = [
    ("NDVI", {"NIR": 0.0, "R": 0.0}),
    ("mCRIG", {"B": 0.0}),
    ("mCRIG", {"G": 0.0}),
    ("CI", {"R": 0.0}),
    ("ClGreen", {"G": 0.0}),
    ("KIVU", {"G": 0.0}),
    ("SABI", {"G": 0.0, "B": 0.0}),
    ("MVI", {"SWIR": 0.0}),
    ("MCARI", {"R": 0.0}),
    ("CHLA", {"B": 0.0}),
    ("CYA", {"B": 0.0}),
    ("CDOM", {"R": 0.0}),
    ("EVI", {"NIR": 1500.0, "R": 0.0, "B": 1501 / 7.5}),
    ("IPVI", {"NIR": 0.0, "R": 0.0}),
    ("MSRNirRed", {"R": 0.0}),
    ("LogR", {"R": 0.0}),
]


@pytest.mark.parametrize(("name", "bands"), ZERO_DENOMINATOR, ids=[z[0] for z in ZERO_DENOMINATOR])
@pytest.mark.parametrize("fill", [np.nan, 0.0, -1.0])
def test_zero_denominator_gives_fill_never_inf(name, bands, fill):
    x = stack(np.float64, **bands)
    out = compute_index(name, x, POS, fill=fill)
    assert not np.isinf(out).any()
    np.testing.assert_array_equal(out, np.full_like(out, fill))
    t = compute_index(name, torch.from_numpy(x), POS, fill=fill)
    np.testing.assert_array_equal(t.numpy(), np.full_like(out, fill))


@pytest.mark.parametrize(
    ("name", "bands"),
    [
        ("TVI", {"R": 100.0, "G": 900.0}),  # (R − G)/(R + G) + 0.5 = −0.3
        ("TNDVI", {"NIR": 100.0, "R": 900.0}),
        ("SQRTNIRR", {"NIR": -100.0}),
        ("LogR", {"NIR": -100.0}),
        ("Kab1", {"B": -5.0}),
        ("CHLA", {"G": -800.0}),
    ],
)
def test_negative_sqrt_log_pow_arguments_give_fill(name, bands):
    assert np.isnan(value(name, **bands)[0])
    assert compute_index(name, stack(**bands), POS, fill=-7.0)[0, 0] == -7.0


def test_reference_epsilon_terms_outside_denominators_are_kept():
    # LogR = ln(N/R + ε) and Kab1 = ... ln(B + ε): zero numerators stay finite, as in the reference
    assert value("LogR", NIR=0.0)[0] == pytest.approx(math.log(EPS))
    assert value("Kab1", B=0.0)[0] == pytest.approx(1.67 - 3.94 * math.log(EPS) + 3.78 * math.log(800))


def test_nan_input_pixels_become_fill():
    out = compute_indices(stack(NIR=[2000.0, np.nan]), POS, ["NDVI", "AVI", "NDVIWM"], fill=0.0)
    np.testing.assert_allclose(out[:, 0, 0], [0.6, 3500.0, 0.6])
    np.testing.assert_array_equal(out[:, 0, 1], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("fill", [np.nan, -999.0])
def test_output_is_finite_or_fill_for_every_index(fill):
    x = random_batch(2)
    x[0, :5, :4] = 0.0  # whole rows of zero reflectance
    x[0, :5, 4:6] = 1e-12  # denominators just above ε... and products far below it
    x[1, :5, :3] = -3.0  # out-of-range negatives
    out = compute_indices(
        x, POS, list(INDEX_REGISTRY), fill=fill, mask_using_qa=True, mask_using_water_mask=True
    )
    assert out.dtype == np.float32
    ok = np.isfinite(out) | (np.isnan(out) if np.isnan(fill) else out == fill)
    assert ok.all()
    assert not np.isinf(out).any()


# --- masking -------------------------------------------------------------------------------------------

MASK_BANDS = {"QA": [0.0, 1.0, 0.0, 0.0, np.nan], "DEM": [-1.0, -1.0, 10.0, np.nan, 0.0]}


def test_water_and_qa_masks():
    x = stack(**MASK_BANDS)
    np.testing.assert_array_equal(water_mask(x, POS)[0], [True, True, False, True, True])
    np.testing.assert_array_equal(qa_ok_mask(x, POS)[0], [True, False, True, True, False])
    assert water_mask(torch.from_numpy(x), POS).dtype == torch.bool


@pytest.mark.parametrize(
    ("qa", "water", "kept"),
    [
        (False, False, [1, 1, 1, 1, 1]),
        (True, False, [1, 0, 1, 1, 0]),
        (False, True, [1, 1, 0, 1, 1]),  # DEM NaN (pixel 3) counts as water and keeps the index
        (True, True, [1, 0, 0, 1, 0]),
    ],
)
def test_masking_puts_fill_where_masked(qa, water, kept):
    x = stack(**MASK_BANDS)
    out = compute_indices(
        x, POS, ["NDVI", "NDVIWM", "DEMWM"], mask_using_qa=qa, mask_using_water_mask=water, fill=-5
    )
    expected_ndvi = np.where(np.array(kept, bool), 0.6, -5.0)
    np.testing.assert_allclose(out[0, 0], expected_ndvi)
    np.testing.assert_allclose(out[1, 0], [0.6] * 5)  # *WM indices are never masked
    np.testing.assert_allclose(out[2, 0], [0.0, 0.0, 10.0, 0.0, 0.0])


def test_masking_needs_the_mask_band():
    positions = band_positions(("NIR", "R"))
    x = np.ones((2, 3, 3), np.float32)
    with pytest.raises(KelpsegError, match="water mask needs band 'DEM'"):
        compute_index("NDVI", x, positions, mask_using_water_mask=True)
    with pytest.raises(ValueError, match="QA mask needs band 'QA'"):
        compute_index("NDVI", x, positions, mask_using_qa=True)
    # a never-masked index does not need the mask bands
    assert compute_index("NDVIWM", x, positions, mask_using_qa=True).shape == (3, 3)


# --- positions, shapes, types --------------------------------------------------------------------------


def test_missing_band_error_names_index_and_band():
    positions = band_positions(("NIR", "G"))
    with pytest.raises(ValueError, match=r"spectral index 'NDVI' needs band 'R'.*bands present: NIR, G"):
        compute_index("NDVI", np.ones((2, 3, 3), np.float32), positions)
    with pytest.raises(KelpsegError, match="needs band 'R' at channel 5, but the input has 2 channels"):
        compute_index("NDVI", np.ones((2, 3, 3), np.float32), {"NIR": 0, "R": 5})


@pytest.mark.parametrize("name", list(INDEX_REGISTRY))
def test_bands_in_another_order_or_subset(name):
    x = random_batch(3)
    needs = INDEX_REGISTRY[name].needs
    order = tuple(reversed(needs))
    sub = np.stack([x[:, POS[b]] for b in order], axis=1)
    np.testing.assert_array_equal(
        compute_index(name, sub, band_positions(order)), compute_index(name, x, POS)
    )


def test_single_tile_and_batch_agree():
    x = random_batch(4, shape=(3, 8, 8))
    names = list(INDEX_REGISTRY)
    batch = compute_indices(x, POS, names, mask_using_qa=True, mask_using_water_mask=True)
    assert batch.shape == (3, len(names), 8, 8)
    for i in range(3):
        single = compute_indices(x[i], POS, names, mask_using_qa=True, mask_using_water_mask=True)
        assert single.shape == (len(names), 8, 8)
        np.testing.assert_array_equal(single, batch[i])


@pytest.mark.parametrize("name", list(INDEX_REGISTRY))
def test_numpy_and_torch_agree(name):
    x = random_batch(5)
    for kw in ({}, {"mask_using_qa": True, "mask_using_water_mask": True, "fill": 0.0}):
        ref = compute_index(name, x, POS, **kw)
        out = compute_index(name, torch.from_numpy(x), POS, **kw)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == ref.shape
        got = out.numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4, equal_nan=True)


def test_dtypes():
    x = random_batch(6)
    assert compute_index("NDVI", x.astype(np.float64), POS).dtype == np.float64
    assert compute_index("NDVI", np.nan_to_num(x).astype(np.int32), POS).dtype == np.float32
    assert compute_index("NDVI", torch.from_numpy(x).double(), POS).dtype == torch.float64
    assert compute_index("NDVI", torch.from_numpy(x).half(), POS).dtype == torch.float32
    np.testing.assert_allclose(
        compute_index("ATSAVI", x.astype(np.float64), POS),
        compute_index("ATSAVI", x, POS),
        rtol=1e-6,
        atol=1e-6,
    )


def test_compute_indices_and_append_indices_shapes():
    x = random_batch(7, shape=(2, 5, 6))
    out = compute_indices(x, POS, BEST_INDICES)
    assert out.shape == (2, 17, 5, 6)
    np.testing.assert_array_equal(out[:, 1], compute_index("NDVI", x, POS))
    assert compute_indices(x, POS, []).shape == (2, 0, 5, 6)

    appended = append_indices(x, POS, ["NDVI", "DEMWM"], mask_using_qa=True)
    assert appended.shape == (2, 9, 5, 6)
    np.testing.assert_array_equal(appended[:, :7], x)
    np.testing.assert_array_equal(
        appended[:, 7:], compute_indices(x, POS, ["NDVI", "DEMWM"], mask_using_qa=True)
    )

    t = append_indices(torch.from_numpy(x), POS, "NDVI,DEMWM", mask_using_qa=True)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 9, 5, 6)
    np.testing.assert_allclose(t.numpy(), appended, rtol=1e-6, equal_nan=True)

    with pytest.raises(ValueError, match="expected an array shaped"):
        compute_index("NDVI", np.ones((7, 5), np.float32), POS)


@pytest.mark.parametrize("block_pixels", [40, 200])
def test_cpu_blocking_gives_the_same_result(monkeypatch, block_pixels):
    import kelpseg.features.indices as indices

    x = random_batch(8, shape=(5, 8, 12))  # 96 pixels an image: rows of one image, or two images a block
    names = list(INDEX_REGISTRY)
    kw = {"mask_using_qa": True, "mask_using_water_mask": True}
    whole = compute_indices(x, POS, names, **kw)
    monkeypatch.setattr(indices, "CPU_BLOCK_PIXELS", block_pixels)
    np.testing.assert_array_equal(compute_indices(x, POS, names, **kw), whole)
    blocked = compute_indices(torch.from_numpy(x), POS, names, **kw).numpy()
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-4, equal_nan=True)
