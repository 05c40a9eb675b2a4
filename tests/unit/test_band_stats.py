"""Band statistics: exact figures vs numpy, quantile error bound, masking, merging, files, refusals."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tqdm import tqdm

from kelpseg.bands import BANDS, FILL_VALUE, TILE_PIXELS, TILE_SIZE, band_positions
from kelpseg.errors import KelpsegError, StageNotRunError, TileError
from kelpseg.features.indices import INDEX_REGISTRY, compute_indices
from kelpseg.io.metadata import write_metadata
from kelpseg.io.tiles import read_tile, write_geotiff
from kelpseg.layout import DataLayout
from kelpseg.prep.band_stats import (
    QUANTILE_MAX_ERROR,
    QUANTILES,
    STAT_KEYS,
    BandStats,
    StatsState,
    _Job,
    accumulate,
    compute_band_stats,
    load_band_stats,
    new_state,
)

S = TILE_SIZE
INDICES = ["NDVI", "MVI", "DEMWM", "CVI"]  # a ratio, an unbounded ratio, a binary one, a squared one
N_FILL_NIR = 7


def make_tile(seed: int) -> np.ndarray:
    """Bands in realistic DN ranges with QA in rows 0-9, land in rows 10-29, DEM nodata in rows 30-39,
    sea level elsewhere, and a few NIR fill pixels."""
    rng = np.random.default_rng(seed)
    tile = np.empty((7, S, S), np.int16)
    for b, (lo, hi) in enumerate([(6000, 9000), (7000, 20000), (7000, 10000), (7000, 11000), (7000, 12000)]):
        tile[b] = rng.integers(lo, hi, size=(S, S))
    tile[5] = 0
    tile[5, :10] = 1
    tile[6] = 0
    tile[6, 10:30] = rng.integers(1, 300, size=(20, S))
    tile[6, 30:40] = FILL_VALUE
    tile[1, 100, :N_FILL_NIR] = FILL_VALUE
    return tile


def make_dataset(root: Path, n_train: int = 3, qa_everywhere: bool = False) -> DataLayout:
    layout = DataLayout(root)
    rows = []
    for i in range(n_train):
        tid = f"TR{i:06d}"
        tile = make_tile(i)
        if qa_everywhere:
            tile[5] = 1
        img = write_geotiff(layout.image_path(tid, "train"), tile, "int16")
        msk = write_geotiff(layout.mask_path(tid), np.zeros((S, S), np.uint8), "uint8")
        rows += [(tid, img.name, "satellite", True), (tid, msk.name, "kelp", True)]
    test_tile = make_tile(99)
    test_tile[:5] = 30000  # would show in every band's max if test tiles were read
    img = write_geotiff(layout.image_path("TE000000", "test"), test_tile, "int16")
    rows.append(("TE000000", img.name, "satellite", False))
    meta = pd.DataFrame(rows, columns=["tile_id", "filename", "type", "in_train"])
    meta["md5_hash"] = "0" * 32
    meta["filesize_bytes"] = 1
    write_metadata(layout.metadata_csv, meta)
    return layout


def expected_channels(layout: DataLayout, fill_value: str, qa: bool, water: bool) -> dict[str, np.ndarray]:
    """Every counted pixel of every channel, computed directly with numpy (float64)."""
    fill = math.nan if fill_value == "nan" else 0.0
    paths = sorted(layout.train_images.glob("*.tif"))
    x = np.stack([read_tile(p, fill=fill) for p in paths])
    idx = compute_indices(
        x, band_positions(BANDS), INDICES, mask_using_qa=qa, mask_using_water_mask=water, fill=fill
    )
    channels = {b: x[:, i] for i, b in enumerate(BANDS)} | {n: idx[:, j] for j, n in enumerate(INDICES)}
    return {k: v[np.isfinite(v)].astype(np.float64) for k, v in channels.items()}


def quantile_bound(ordered: np.ndarray, q: float) -> float:
    """The documented error bound for np.quantile(ordered, q) (linear method); ``ordered`` is sorted."""
    pos = (len(ordered) - 1) * q
    lo, hi = ordered[math.floor(pos)], ordered[min(math.floor(pos) + 1, len(ordered) - 1)]
    return QUANTILE_MAX_ERROR * max(abs(lo), abs(hi)) + 2.0**-135


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    return make_dataset(tmp_path_factory.mktemp("band_stats"))


@pytest.mark.parametrize(
    ("fill_value", "qa", "water"),
    [
        ("nan", True, True),
        ("nan", False, False),
        ("nan", True, False),
        ("0", True, True),
        ("0", False, False),
    ],
)
def test_figures_match_numpy(dataset: DataLayout, fill_value: str, qa: bool, water: bool) -> None:
    stats, path = compute_band_stats(
        dataset, fill_value, qa, water, indices=INDICES, workers=1, progress=False
    )
    assert stats.names == [*BANDS, "CVI", "MVI", "NDVI", "DEMWM"]  # bands, then registry order
    assert stats.n_tiles == 3
    expected = expected_channels(dataset, fill_value, qa, water)
    for name, values in expected.items():
        got = stats.get(name)
        if got["binary"]:
            continue
        assert got["count"] == values.size, name
        assert got["min"] == values.min() and got["max"] == values.max(), name
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-10), name
        assert got["std"] == pytest.approx(values.std(), rel=1e-9), name
        ordered = np.sort(values)
        for key, q in QUANTILES.items():
            exact = np.quantile(ordered, q)
            if name in BANDS:  # integer histogram: exact
                assert got[key] == pytest.approx(exact, rel=1e-12, abs=1e-9), (name, key)
            else:
                assert abs(got[key] - exact) <= quantile_bound(ordered, q), (name, key, got[key], exact)
    assert json.loads(path.read_text())["channels"] == stats.channels


def test_masking_and_fill_counts(dataset: DataLayout) -> None:
    all_pixels = 3 * TILE_PIXELS
    masked, _ = compute_band_stats(dataset, "nan", True, True, indices=INDICES, workers=1, progress=False)
    # QA rows 0-9 and land rows 10-29 are masked; DEM nodata (rows 30-39) counts as water
    assert masked.get("NDVI")["count"] == 3 * ((S - 30) * S - N_FILL_NIR)
    assert masked.get("NIR")["count"] == all_pixels - 3 * N_FILL_NIR  # bands are never masked
    assert masked.get("DEM")["count"] == all_pixels - 3 * 10 * S  # DEM fill excluded
    assert masked.get("DEMWM")["count"] == all_pixels  # never masked, 0 at DEM nodata
    plain, _ = compute_band_stats(dataset, "nan", False, False, indices=INDICES, workers=1, progress=False)
    assert plain.get("NDVI")["count"] == all_pixels - 3 * N_FILL_NIR
    zero, _ = compute_band_stats(dataset, "0", True, True, indices=INDICES, workers=1, progress=False)
    assert zero.get("NDVI")["count"] == all_pixels and zero.get("NIR")["count"] == all_pixels
    assert zero.get("NIR")["min"] == 0.0 and zero.get("DEM")["min"] == 0.0  # fills count as 0
    assert zero.get("NDVI")["q01"] <= 0.0


def test_only_training_tiles(dataset: DataLayout) -> None:
    stats, _ = compute_band_stats(dataset, indices=[], workers=1, progress=False)
    assert stats.n_tiles == 3
    assert stats.get("SWIR")["max"] < 9000 and stats.get("B")["max"] < 12000
    assert stats.options["split"] == "train"


def test_binary_channels_forced(dataset: DataLayout) -> None:
    stats, _ = compute_band_stats(dataset, indices=["DEMWM", "NDVI"], workers=1, progress=False)
    for name in ("QA", "DEMWM"):
        got = stats.get(name)
        assert got["binary"] is True
        assert (got["min"], got["max"], got["q01"], got["q99"], got["mean"], got["std"]) == (0, 1, 0, 1, 0, 1)
        assert got["count"] > 0
    assert stats.get("NDVI")["binary"] is False and stats.get("DEM")["binary"] is False


def test_all_registered_indices_by_default(dataset: DataLayout) -> None:
    stats, path = compute_band_stats(dataset, workers=2, progress=False)
    assert stats.names == [*BANDS, *INDEX_REGISTRY]
    assert stats.options["indices"] == list(INDEX_REGISTRY)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    for name, channel in stats.channels.items():
        values = [v for k, v in channel.items() if k != "binary"]
        assert all(math.isfinite(v) for v in values), name
        chain = [channel[k] for k in ("min", *QUANTILES, "max")]
        assert chain == sorted(chain), name
    # the same numbers whatever the number of workers
    serial, _ = compute_band_stats(dataset, workers=1, progress=False)
    assert serial.channels == stats.channels


def test_merge_equals_one_pass(dataset: DataLayout) -> None:
    paths = tuple(str(p) for p in sorted(dataset.train_images.glob("*.tif")))
    names = tuple(INDICES)

    def job(p: tuple[str, ...]) -> _Job:
        return _Job(p, names, "nan", True, True, batch_size=2)

    whole = accumulate(job(paths))
    parts = accumulate(job(paths[:1])).merge(accumulate(job(paths[1:])))
    np.testing.assert_array_equal(whole.count, parts.count)
    np.testing.assert_array_equal(whole.vmin, parts.vmin)
    np.testing.assert_array_equal(whole.vmax, parts.vmax)
    np.testing.assert_allclose(whole.mean, parts.mean, rtol=1e-13)
    np.testing.assert_allclose(whole.m2, parts.m2, rtol=1e-11)
    for a, b in zip(whole.hist, parts.hist, strict=True):
        np.testing.assert_array_equal(a, b)
    assert parts.n_tiles == 3
    for c in range(len(whole.names)):
        assert whole.channel_stats(c, False) == parts.channel_stats(c, False)
    again = StatsState.from_payload(parts.to_payload())
    for c in range(len(whole.names)):
        assert again.channel_stats(c, False) == parts.channel_stats(c, False)


@pytest.mark.parametrize("n", [1, 2, 5, 1000, 50_000])
def test_float_quantiles_within_bound(n: int) -> None:
    rng = np.random.default_rng(n)
    parts = [
        rng.lognormal(0, 4, n),
        -rng.lognormal(2, 1, n // 2 + 1),
        np.zeros(n // 10),
        rng.normal(0, 1e-3, n // 3),
        np.array([3.0e38, -1e-40]),
    ]
    values = np.concatenate(parts).astype(np.float32)
    values = values[np.isfinite(values)]
    state = new_state(["NDVI"])
    c = len(BANDS)
    for chunk in np.array_split(values, 3):
        state.update_channel(c, chunk)
    got = state.quantiles(c)
    exact64 = np.sort(values.astype(np.float64))
    for key, q in QUANTILES.items():
        exact = np.quantile(exact64, q)
        assert abs(got[key] - exact) <= quantile_bound(exact64, q), (key, got[key], exact)
    assert state.count[c] == values.size
    assert state.vmin[c] == values.min() and state.vmax[c] == values.max()


def test_integer_quantiles_exact_and_non_integer_fallback() -> None:
    rng = np.random.default_rng(0)
    state = new_state([])
    ints = rng.integers(-32768, 65535, 10_001).astype(np.float32)
    state.update_channel(0, ints)
    for key, q in QUANTILES.items():
        assert state.quantiles(0)[key] == pytest.approx(np.quantile(ints.astype(np.float64), q), abs=1e-9)
    halves = np.array([0.5, 1.25, 7.75], np.float32)  # not integers: moments computed directly
    state.update_channel(1, halves)
    assert state.mean[1] == pytest.approx(halves.mean()) and state.count[1] == 3
    assert state.quantiles(1)["q50"] == 1.0  # 1.25 rounded for the histogram: error <= 0.5
    huge = np.array([-1e30, 5.0, 1e30], np.float32)  # clipped into the end bins, extremes exact
    state.update_channel(2, huge)
    assert (
        state.out_of_range[2] == 2
        and state.vmin[2] == -np.float32(1e30)
        and state.vmax[2] == np.float32(1e30)
    )
    assert state.quantiles(2)["q50"] == 5.0


def test_zero_reported_exactly() -> None:
    state = new_state(["NDVI"])
    state.update_channel(len(BANDS), np.r_[np.zeros(100), np.full(5, -0.0), np.ones(3)].astype(np.float32))
    got = state.quantiles(len(BANDS))
    assert got["q01"] == got["q50"] == got["q95"] == 0.0 and got["q99"] == 1.0


def test_no_finite_pixel_fails_loudly(tmp_path: Path) -> None:
    layout = make_dataset(tmp_path, n_train=1, qa_everywhere=True)
    with pytest.raises(KelpsegError, match="channel 'NDVI' has no finite pixel over the 1 training tile"):
        compute_band_stats(layout, indices=["NDVI"], workers=1, progress=False)


def test_file_name_and_options(dataset: DataLayout) -> None:
    stats, path = compute_band_stats(dataset, "0", False, True, indices=["NDVI"], workers=1, progress=False)
    assert path == dataset.band_stats_path("0", False, True)
    assert path.name == "stats-fill_value=0-mask_using_qa=False-mask_using_water_mask=True.json"
    data = json.loads(path.read_text())
    assert list(data) == ["options", "n_tiles", "channels"]
    opts = data["options"]
    assert (opts["fill_value"], opts["mask_using_qa"], opts["mask_using_water_mask"]) == ("0", False, True)
    assert opts["split"] == "train" and opts["indices"] == ["NDVI"]
    assert opts["quantile_max_error"] == QUANTILE_MAX_ERROR and "histogram" in opts["quantile_method"]
    assert list(opts) == sorted(opts)
    assert list(data["channels"]["NIR"]) == sorted(data["channels"]["NIR"])
    assert set(data["channels"]["NIR"]) == set(STAT_KEYS)
    first = path.read_bytes()
    compute_band_stats(dataset, "0", False, True, indices=["NDVI"], workers=1, progress=False)
    assert path.read_bytes() == first  # deterministic: no timestamp
    assert load_band_stats(path).channels == stats.channels


def test_bad_options(dataset: DataLayout) -> None:
    with pytest.raises(KelpsegError, match="fill_value must be 'nan' or '0', got '1'"):
        compute_band_stats(dataset, "1", indices=[], workers=1, progress=False)
    with pytest.raises(KelpsegError, match="unknown spectral index 'NDVX'"):
        compute_band_stats(dataset, indices=["NDVX"], workers=1, progress=False)


def test_load_refusals(tmp_path: Path) -> None:
    missing = DataLayout(tmp_path).band_stats_path("nan", True, True)
    with pytest.raises(
        StageNotRunError, match=r"not found: run `kelpseg band-stats` \(make calculate-band-stats\)"
    ):
        load_band_stats(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KelpsegError, match="not a band-stats JSON"):
        load_band_stats(bad)
    bad.write_text(json.dumps({"options": {}, "n_tiles": 1, "channels": {"NIR": {"count": 1}}}))
    with pytest.raises(KelpsegError, match="channel 'NIR' lacks min"):
        load_band_stats(bad)
    channel = {k: 1.0 for k in ("count", "min", "max", "mean", "std", "q01", "q99")}
    bad.write_text(json.dumps({"channels": {"NIR": channel | {"std": float("nan")}}}))
    with pytest.raises(KelpsegError, match="channel 'NIR' has non-finite or non-numeric std"):
        load_band_stats(bad)
    bad.write_text(json.dumps({"options": {"split": "train"}, "n_tiles": 2, "channels": {"NIR": channel}}))
    loaded = load_band_stats(bad)
    assert isinstance(loaded, BandStats) and loaded.get("NIR")["mean"] == 1.0 and loaded.n_tiles == 2
    with pytest.raises(KelpsegError, match="no statistics for channel 'NDVI'"):
        loaded.get("NDVI")


def test_refuses_without_metadata(tmp_path: Path) -> None:
    with pytest.raises(KelpsegError, match="metadata"):
        compute_band_stats(DataLayout(tmp_path), workers=1, progress=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_tile_error_reaches_the_caller(tmp_path: Path, workers: int) -> None:
    layout = make_dataset(tmp_path, n_train=3)
    bad = layout.image_path("TR000001", "train")
    bad.write_bytes(b"not a tiff")
    with pytest.raises(TileError, match=r"TR000001_satellite\.tif"):
        compute_band_stats(layout, indices=["NDVI"], workers=workers, progress=False)
    assert not layout.band_stats_dir.exists() or not list(layout.band_stats_dir.iterdir())


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="patching reaches workers by fork")
def _dying_worker(worker_id: int, job: object, results: object) -> None:
    os._exit(3)  # a worker killed without a word (out of memory, signal)


def test_dead_worker_is_reported(dataset: DataLayout) -> None:
    import kelpseg.prep.band_stats as band_stats

    jobs = [band_stats._Job(("a",), (), "nan", True, True), band_stats._Job(("b",), (), "nan", True, True)]
    with pytest.raises(RuntimeError, match=r"worker died \(exit code 3\)"):
        band_stats._run_parallel(jobs, tqdm(disable=True), target=_dying_worker)


@pytest.mark.parametrize("fill_value", ["nan", "0"])
@pytest.mark.parametrize("masking", [(True, True), (False, True), (False, False)])
def test_fast_batch_update_equals_generic_path(fill_value: str, masking: tuple[bool, bool]) -> None:
    """Bands counted on the raw integers and indices selected without the filled stack give the
    same state, bit for bit, as the generic float path (update_channel on compute_indices)."""
    from kelpseg.io.tiles import raw_to_float
    from kelpseg.prep.band_stats import update_with_batch

    raw = np.stack([make_tile(s) for s in (3, 4, 5)])
    names = tuple(INDEX_REGISTRY)
    job = _Job((), names, fill_value, *masking)
    fill = math.nan if fill_value == "nan" else 0.0
    x = raw_to_float(raw, fill)
    fast = new_state(names)
    update_with_batch(fast, x, job, raw=raw)
    generic = new_state(names)
    for b in range(len(BANDS)):
        generic.update_channel(b, x[:, b])
    idx = compute_indices(
        x, band_positions(BANDS), names, mask_using_qa=masking[0], mask_using_water_mask=masking[1], fill=fill
    )
    for j in range(len(names)):
        generic.update_channel(len(BANDS) + j, idx[:, j])
    for key in ("count", "vmin", "vmax", "mean", "m2"):
        np.testing.assert_array_equal(getattr(fast, key), getattr(generic, key), err_msg=key)
    for c, (a, b) in enumerate(zip(fast.hist, generic.hist, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=fast.names[c])
    assert fast.count[BANDS.index("NIR")] == raw[:, 1].size - (3 * N_FILL_NIR if fill_value == "nan" else 0)


def test_float_histogram_equals_bincount_of_float_keys() -> None:
    from kelpseg.prep.band_stats import FLOAT_BINS, float_histogram, float_keys

    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(0, 1, 5000),
            rng.normal(0, 1e6, 5000),
            [0.0, -0.0, 1e-40, -1e-40, 3.4e38, -3.4e38, 1.0, -1.0],
        ]
    ).astype(np.float32)
    np.testing.assert_array_equal(
        float_histogram(values), np.bincount(float_keys(values), minlength=FLOAT_BINS)
    )
