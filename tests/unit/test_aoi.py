"""AOI grouping: recognising the same place across dates from the DEM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from kelpseg.bands import FILL_VALUE, TILE_SIZE
from kelpseg.errors import KelpsegError, StageNotRunError
from kelpseg.io.metadata import write_metadata
from kelpseg.io.tiles import write_geotiff
from kelpseg.layout import DataLayout
from kelpseg.prep import aoi

MAX_SHIFT = 6
CANVAS = TILE_SIZE + MAX_SHIFT


def fractal(rng: np.random.Generator, size: int = CANVAS, beta: float = 3.0) -> np.ndarray:
    """Smooth random terrain: white noise with power spectrum 1/f^beta, mean 0, std 1."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = np.inf
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) * f ** (-beta / 2)
    z = np.fft.irfft2(spec, s=(size, size))
    return (z - z.mean()) / z.std()


def coast_canvas(rng: np.random.Generator, land: float) -> np.ndarray:
    """A DEM canvas with ``land`` fraction above sea level (metres), 0 at sea, nodata far offshore."""
    z = fractal(rng)
    level = np.quantile(z, 1 - land)
    dem = np.where(z > level, 1 + (z - level) * rng.uniform(100, 500), 0.0)
    dem[z < level - 1.2] = FILL_VALUE
    return dem.astype(np.float32)


def crop(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y, x = rng.integers(0, MAX_SHIFT + 1, size=2)
    return canvas[y : y + TILE_SIZE, x : x + TILE_SIZE]


def fixture_dems(seed: int, n_aoi: int = 14, max_dates: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    """DEMs of ``n_aoi`` places (1-``max_dates`` shifted crops each) + their true labels."""
    rng = np.random.default_rng(seed)
    dems, labels = [], []
    for a in range(n_aoi):
        canvas = coast_canvas(rng, land=rng.uniform(0.02, 0.7))
        for _ in range(int(rng.integers(1, max_dates + 1))):
            dems.append(crop(canvas, rng))
            labels.append(a)
    order = rng.permutation(len(dems))  # dates of one place are not neighbours in the catalog
    return [dems[i] for i in order], np.asarray(labels)[order]


def featureless_dems() -> list[np.ndarray]:
    water = np.zeros((TILE_SIZE, TILE_SIZE), np.float32)
    nodata = np.full((TILE_SIZE, TILE_SIZE), FILL_VALUE, np.float32)
    half = water.copy()
    half[:, :175] = FILL_VALUE
    speck = water.copy()
    speck[200:205, 40:45] = 12.0  # 25 land px: 0.02 % of the tile
    return [water, water.copy(), nodata, nodata.copy(), np.full_like(water, np.nan), half, speck]


# ---- pure functions ---------------------------------------------------------------------------
def test_relief_and_land_fraction_treat_nodata_as_water() -> None:
    dem = np.array([[FILL_VALUE, np.nan], [0.0, np.e - 1]], np.float32)
    np.testing.assert_allclose(aoi.relief(dem), [[0, 0], [0, 1]], atol=1e-6)
    assert aoi.land_fraction(dem) == 0.25


def test_block_mean_matches_hand_computed() -> None:
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(aoi.block_mean(x, 2), [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError, match="must divide"):
        aoi.block_mean(x, 3)


def test_shifted_correlation_finds_the_shift_and_is_symmetric() -> None:
    rng = np.random.default_rng(0)
    base = fractal(rng, 80, beta=2.0).astype(np.float32)
    a, b = base[:70, :70], base[2:72, 1:71]  # same scene, shifted (2, 1)
    other = fractal(rng, 70, beta=2.0).astype(np.float32)
    assert aoi.shifted_correlation(a, b, 2) == pytest.approx(1.0, abs=1e-5)
    assert aoi.shifted_correlation(a, b, 0) < 0.9  # without the shift search it is not found
    assert aoi.shifted_correlation(a, b, 2) == pytest.approx(aoi.shifted_correlation(b, a, 2), abs=1e-6)
    assert abs(aoi.shifted_correlation(a, other, 2)) < 0.5
    assert aoi.shifted_correlation(a, np.ones_like(a), 2) == 0.0  # constant image


def test_shifted_correlation_without_shift_is_pearson() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 3, 30, 30)).astype(np.float32)
    b = a + rng.normal(size=a.shape).astype(np.float32)
    expected = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(3)]
    np.testing.assert_allclose(aoi.shifted_correlation(a, b, 0), expected, atol=1e-5)


def test_connected_labels_are_transitive_and_ids_dense() -> None:
    labels = aoi.connected_labels(6, np.array([[0, 2], [2, 4], [1, 5]]))
    assert labels[0] == labels[2] == labels[4]
    assert labels[1] == labels[5]
    assert len({labels[0], labels[1], labels[3]}) == 3
    np.testing.assert_array_equal(aoi.dense_ids(np.array([7, 3, 7, 9, 3])), [0, 1, 0, 2, 1])


def test_candidate_pairs_are_unique_and_ordered() -> None:
    rng = np.random.default_rng(2)
    v = aoi.unit_rows(rng.normal(size=(50, 20)))
    pairs = aoi.candidate_pairs(v, n_neighbors=4, dims=8)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    assert 50 * 4 / 2 <= len(pairs) <= 50 * 4
    assert aoi.candidate_pairs(v[:1]).shape == (0, 2)


# ---- grouping on arrays -----------------------------------------------------------------------
def test_recovers_true_places_from_shifted_crops() -> None:
    dems, labels = fixture_dems(seed=3)
    ids = aoi.group_dems(dems)
    assert adjusted_rand_score(labels, ids) >= 0.95
    assert len(set(ids)) == len(set(labels))


def test_groups_are_transitive() -> None:
    """A~B and B~C are linked while A and C alone are not similar: all three end up in one group."""
    rng = np.random.default_rng(4)
    x = 1 + 300 * np.abs(fractal(rng))[:TILE_SIZE, :TILE_SIZE]
    y = 1 + 300 * np.abs(fractal(rng))[:TILE_SIZE, :TILE_SIZE]
    # relief (log1p) of the middle tile is the mean of the two, so its detail is the mean too
    b = np.expm1((np.log1p(x) + np.log1p(y)) / 2)
    params = aoi.AoiParams(min_search_similarity=-1.0)
    d = [aoi.describe_dem(t, params) for t in (x, b, y)]
    ab, bc, ac = (aoi.shifted_correlation(d[i].detail, d[j].detail, 2) for i, j in ((0, 1), (1, 2), (0, 2)))
    assert ab >= params.threshold and bc >= params.threshold
    assert ac < params.threshold
    ids = aoi.group_descriptors(d, params).aoi_id
    np.testing.assert_array_equal(ids, [0, 0, 0])


def test_featureless_tiles_are_pooled_or_kept_alone() -> None:
    dems = featureless_dems()[:-1] * 3  # the speck of land is matched exactly: see below
    descriptors = [aoi.describe_dem(d) for d in dems]
    assert not any(d.usable for d in descriptors)
    outcome = aoi.group_descriptors(descriptors)
    assert outcome.unplaced.all()
    specks = aoi.group_descriptors([aoi.describe_dem(featureless_dems()[-1])] * 2)
    assert not specks.unplaced.any() and len(specks.links) == 1  # too little land to correlate
    np.testing.assert_array_equal(outcome.aoi_id, np.zeros(len(dems)))  # one pool: never split apart
    alone = aoi.group_descriptors(descriptors, aoi.AoiParams(pool_unplaced=False)).aoi_id
    np.testing.assert_array_equal(alone, np.arange(len(dems)))


def test_featureless_tiles_do_not_join_real_groups() -> None:
    dems, labels = fixture_dems(seed=5, n_aoi=6)
    blank = featureless_dems()
    ids = aoi.group_dems(dems + blank)
    assert adjusted_rand_score(labels, ids[: len(dems)]) >= 0.95
    assert len(set(ids[len(dems) :])) == 1  # the pool
    assert not set(ids[len(dems) :]) & set(ids[: len(dems)])


def test_zero_or_one_tile() -> None:
    assert aoi.group_dems([]).tolist() == []
    dems, _ = fixture_dems(seed=8, n_aoi=1, max_dates=1)
    assert aoi.group_dems(dems[:1]).tolist() == [0]
    assert aoi.group_dems([*dems[:1], featureless_dems()[0]]).tolist() == [0, 1]
    assert aoi.group_dems(featureless_dems()[:2]).tolist() == [0, 0]


def test_ids_are_deterministic_and_numbered_by_first_member() -> None:
    dems, _ = fixture_dems(seed=6, n_aoi=8)
    first = aoi.group_dems(dems)
    np.testing.assert_array_equal(first, aoi.group_dems(dems))
    seen = list(dict.fromkeys(first.tolist()))
    assert seen == list(range(len(seen)))


# ---- stage on disk ----------------------------------------------------------------------------
def write_dem_dataset(root: Path, dems: list[np.ndarray], n_train: int) -> tuple[DataLayout, list[str]]:
    """Tiles whose DEM band is given (other bands constant), the first ``n_train`` in train."""
    layout = DataLayout(root)
    rows, ids = [], []
    for i, dem in enumerate(dems):
        tid = f"AB{i:06d}"
        split = "train" if i < n_train else "test"
        tile = np.full((7, TILE_SIZE, TILE_SIZE), 8000, np.int16)
        tile[5] = 0
        tile[6] = np.where(np.isfinite(dem), np.round(dem), FILL_VALUE).astype(np.int16)
        path = write_geotiff(layout.image_path(tid, split), tile, "int16")
        rows.append((tid, path.name, "satellite", split == "train"))
        if split == "train":
            rows.append((tid, f"{tid}_kelp.tif", "kelp", True))
        ids.append(tid)
    meta = pd.DataFrame(rows, columns=["tile_id", "filename", "type", "in_train"])
    meta["md5_hash"] = "0" * 32
    meta["filesize_bytes"] = 1
    write_metadata(layout.metadata_csv, meta)
    return layout, ids


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataLayout, aoi.AoiResult, dict[str, int]]:
    dems, labels = fixture_dems(seed=7, n_aoi=6, max_dates=3)
    dems = [*dems, *featureless_dems()[:2]]
    labels = np.concatenate([labels, [100, 100]])  # two dates of one open-water place
    layout, ids = write_dem_dataset(tmp_path_factory.mktemp("aoi"), dems, n_train=len(dems) - 4)
    truth = pd.DataFrame({"tile_id": ids, "split": "train", "aoi": [f"aoi_{x}" for x in labels]})
    layout.truth.mkdir(parents=True)
    truth.assign(shift_x=0, shift_y=0).to_csv(layout.truth_aoi_table, index=False)
    result = aoi.group_aois(layout, workers=2, progress=False)
    return layout, result, dict(zip(ids, labels, strict=True))


def test_group_aois_writes_table_json_and_report(grouped) -> None:
    layout, result, truth = grouped
    table = pd.read_parquet(layout.aoi_table)
    assert list(table.columns) == ["tile_id", "split", "aoi_id", "usable"]
    assert len(table) == len(truth)
    assert set(table["split"]) == {"train", "test"}
    assert table["aoi_id"].dtype == np.int64 and table["usable"].dtype == bool
    assert table["aoi_id"].min() == 0 and table["aoi_id"].max() == table["aoi_id"].nunique() - 1
    assert (table["split"].iloc[: (table["split"] == "train").sum()] == "train").all()  # catalog order
    assert table["usable"].sum() == len(truth) - 2

    groups = json.loads(layout.aoi_groups_json.read_text())
    assert groups["threshold"] == result.threshold == aoi.AoiParams().threshold
    assert groups["method"] == aoi.METHOD
    assert sorted(t for g in groups["groups"] for t in g) == sorted(truth)
    by_id = table.groupby("aoi_id")["tile_id"].apply(list).tolist()
    assert groups["groups"] == by_id

    report = json.loads(layout.aoi_report.read_text())
    assert report["n_tiles"] == len(truth) and report["n_groups"] == len(groups["groups"])
    assert sum(int(k) * v for k, v in report["group_size_histogram"].items()) == len(truth)
    assert report["n_unusable"] == 2
    assert groups["unplaced_aoi_id"] is not None
    assert set(report["timings_s"]) == {"describe", "exact", "search", "verify", "components"}
    assert report["n_unplaced"] == 2

    # every group says how it was joined: a spanning tree of n - 1 links, or why it has none
    evidence = groups["group_evidence"]
    assert [g["aoi_id"] for g in evidence] == list(range(len(groups["groups"])))
    for members, g in zip(groups["groups"], evidence, strict=True):
        assert g["n_tiles"] == len(members)
        if aoi.UNPLACED in g["joined_by"]:
            assert g["aoi_id"] == groups["unplaced_aoi_id"] and g["links"] == []
        elif len(members) == 1:
            assert g["joined_by"] == {"single tile": 1} and g["links"] == []
        else:
            assert len(g["links"]) == len(members) - 1
            assert {t for link in g["links"] for t in link["tiles"]} == set(members)
            assert sum(g["joined_by"].values()) == len(members) - 1


def test_group_aois_matches_truth(grouped) -> None:
    layout, _, _ = grouped
    agreement = aoi.aoi_agreement(layout)
    assert agreement["ari"] >= 0.95
    assert agreement["n_groups_found"] == agreement["n_groups_true"]
    assert agreement["pair_precision"] == 1.0 and agreement["pair_recall"] == 1.0


def test_threshold_is_validated_and_recorded(grouped) -> None:
    layout, _, _ = grouped
    with pytest.raises(KelpsegError, match="threshold"):
        aoi.group_aois(layout, threshold=1.5, progress=False)
    # threshold above any score: only exact-elevation links remain
    result = aoi.group_aois(layout, threshold=1.0, workers=1, progress=False)
    assert "detail-correlation" not in result.report()["links_by_evidence"]
    assert json.loads(layout.aoi_groups_json.read_text())["threshold"] == 1.0
    aoi.group_aois(layout, progress=False, workers=1)  # leave the default outputs for other tests


def test_agreement_errors(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    with pytest.raises(KelpsegError, match=r"aoi_membership\.csv"):
        aoi.aoi_agreement(layout)
    layout.truth.mkdir(parents=True)
    pd.DataFrame({"tile_id": ["AB000000"], "aoi": ["a"]}).to_csv(layout.truth_aoi_table, index=False)
    with pytest.raises(StageNotRunError, match="aoi-grouping"):
        aoi.aoi_agreement(layout)


def test_pair_scores_hand_computed() -> None:
    # truth {0,1,2},{3}; found {0,1},{2,3}: 1 of 2 found pairs is true, 1 of 3 true pairs found
    scores = aoi.pair_scores([0, 0, 0, 1], [5, 5, 6, 6])
    assert scores == {"pair_precision": 0.5, "pair_recall": pytest.approx(1 / 3)}


def test_synthetic_dataset_groups_match_truth(tmp_path: Path) -> None:
    from kelpseg.synthetic import generate_dataset

    generate_dataset(tmp_path, 40, 10, seed=0, workers=2, progress=False)
    layout = DataLayout(tmp_path)
    result = aoi.group_aois(layout, workers=2, progress=False)
    assert set(result.table["split"]) == {"train", "test"}
    agreement = aoi.aoi_agreement(layout)
    assert agreement["n_tiles"] == 50
    assert agreement["ari"] >= 0.95


# ---- exact-elevation keys and the project's generator at hard settings -------------------------
def test_patch_hashes_depend_only_on_the_values() -> None:
    rng = np.random.default_rng(9)
    v = rng.integers(1, 500, size=(40, 40))
    h = aoi.patch_hashes(v, 5)
    assert h.shape == (36, 36)
    np.testing.assert_array_equal(aoi.patch_hashes(v[7:, 3:], 5), h[7:, 3:])  # a crop: same hashes
    assert len(np.unique(h)) == h.size
    w = v.copy()
    w[10, 10] += 1
    changed = aoi.patch_hashes(w, 5) != h
    assert changed.sum() == 25 and changed[6:11, 6:11].all()  # exactly the windows holding it


def test_exact_links_find_large_offsets_and_misregistration() -> None:
    """Crops 110 px apart (a third of a tile) plus a 2 px DEM shift are linked at the right offset."""
    rng = np.random.default_rng(10)
    canvas = coast_canvas(rng, land=0.5)
    big = np.pad(canvas, ((0, 120), (0, 120)), mode="reflect")
    a = big[0:TILE_SIZE, 0:TILE_SIZE]
    b = big[110 : 110 + TILE_SIZE, 2 : 2 + TILE_SIZE]
    other = coast_canvas(rng, land=0.5)[:TILE_SIZE, :TILE_SIZE]
    d = [aoi.describe_dem(x) for x in (a, b, other)]
    links = aoi.exact_links(d)
    np.testing.assert_array_equal(links.pairs, [[0, 1]])
    np.testing.assert_array_equal(links.offset, [[110, 2]])  # a's (y, x) is b's (y - 110, x - 2)
    assert links.strength[0] >= 10
    assert aoi.shifted_correlation(d[0].detail, d[1].detail, 2) < aoi.AoiParams().threshold  # too far


def test_local_minimum_keys_link_a_small_overlap_with_a_large_tile() -> None:
    """A tile whose only land is an 80 x 80 px piece of a mountainous tile: the tile-wide smallest
    hashes of the large tile miss that piece, the local minima do not (and too few votes is no link)."""
    rng = np.random.default_rng(12)
    a = np.rint(1 + 200 * (fractal(rng, TILE_SIZE) + 5)).astype(np.float32)  # all land
    b = np.zeros_like(a)
    b[:80, 150:230] = a[100:180, 250:330]  # b's (y, x) is a's (y + 100, x + 100)
    d = [aoi.describe_dem(x) for x in (a, b)]
    links = aoi.exact_links(d)
    np.testing.assert_array_equal(links.pairs, [[0, 1]])
    np.testing.assert_array_equal(links.offset, [[100, 100]])
    bottom_k = aoi.AoiParams(local_min_window=0)
    assert len(aoi.exact_links([aoi.describe_dem(x, bottom_k) for x in (a, b)], bottom_k)) == 0


HARD = {"max_crop_offset": 116, "p_dem_misregistration": 0.3, "p_chain": 0.3}


def straddling_areas(tmp: Path, truth: pd.DataFrame, aoi_id: np.ndarray, n_splits: int = 10) -> int:
    """True areas with training tiles on both sides of a fold of the real CV split over ``aoi_id``."""
    from kelpseg.prep.split import make_cv_split

    layout = DataLayout(tmp)
    eda = pd.DataFrame(
        {
            "tile_id": truth["tile_id"],
            "aoi_id": aoi_id,
            "split": truth["split"],
            "kelp_pixels_pct": np.where(truth["split"] == "train", 0.0, np.nan),
            "high_kelp_pixels_pct": False,
        }
    )
    layout.eda_dir.mkdir(parents=True)
    eda.to_parquet(layout.eda_stats)
    split = pd.read_parquet(make_cv_split(layout, n_splits=n_splits, stratification_columns=()))
    split = split.merge(truth[["tile_id", "aoi"]], on="tile_id")
    train = split[split["original_split"] == "train"]
    return sum(int((train.groupby("aoi")[f"split_{k}"].nunique() > 1).sum()) for k in range(n_splits))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generator_hard_revisits_are_grouped_without_straddles(tmp_path: Path, seed: int) -> None:
    """Offsets up to a third of a tile, 1-2 px DEM misregistration and chains of crops."""
    from kelpseg.synthetic import SynthConfig, generate_dems

    truth, dems = generate_dems(120, 30, seed, SynthConfig(**HARD))
    assert truth["shift_x"].max() > 300 and (truth["dem_dx"] != 0).any()  # the hard cases are there
    ids = aoi.group_dems(dems)
    n_true, n_found = truth["aoi"].nunique(), len(set(ids))
    assert n_true >= 25
    assert adjusted_rand_score(truth["aoi"], ids) >= 0.99
    assert n_true <= n_found <= 1.05 * n_true
    assert straddling_areas(tmp_path, truth, ids) == 0


def test_generator_open_water_is_pooled(tmp_path: Path) -> None:
    """Open-water tiles (no terrain) share one group, so no open-water area straddles a fold."""
    from kelpseg.synthetic import SynthConfig, generate_dems

    truth, dems = generate_dems(120, 30, 3, SynthConfig(**HARD, p_open_water=0.15))
    outcome = aoi.group_descriptors([aoi.describe_dem(d) for d in dems])
    open_water = (
        truth["aoi"].isin([a for a, g in truth.groupby("aoi") if (dems[g.index] <= 0).all()]).to_numpy()
    )
    assert open_water.sum() >= 5
    assert outcome.unplaced[open_water].all()
    assert len(set(outcome.aoi_id[open_water])) == 1
    placed = ~outcome.unplaced
    assert adjusted_rand_score(truth["aoi"][placed], outcome.aoi_id[placed]) >= 0.99
    assert straddling_areas(tmp_path, truth, outcome.aoi_id) == 0


def test_generator_defaults_are_unchanged(tmp_path: Path) -> None:
    """The revisit knobs off, the generator writes what it always wrote (tiles, masks, truth)."""
    import hashlib

    import rasterio

    from kelpseg.synthetic import generate_dataset

    generate_dataset(tmp_path, 6, 3, seed=5, workers=1, progress=False)
    h = hashlib.sha256()
    for path in sorted(tmp_path.rglob("*.tif")):
        with rasterio.open(path) as src:
            h.update(path.relative_to(tmp_path).as_posix().encode())
            h.update(np.ascontiguousarray(src.read()).tobytes())
    h.update((tmp_path / "truth" / "aoi_membership.csv").read_bytes())
    assert h.hexdigest() == "a5829097987a17cf886478bd90a440a638d224995d870a769de7b2a11f3e10a0"
