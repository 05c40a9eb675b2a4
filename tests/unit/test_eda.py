"""EDA stage: exact per-tile stats on hand-made tiles, outputs, refusal."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kelpseg.bands import FILL_VALUE, TILE_PIXELS, TILE_SIZE
from kelpseg.errors import StageNotRunError
from kelpseg.io.atomic import write_parquet
from kelpseg.io.metadata import write_metadata
from kelpseg.io.tiles import write_geotiff
from kelpseg.layout import DataLayout
from kelpseg.prep.eda import (
    PLOTS,
    STATS_COLUMNS,
    _integer_counts,
    _overview,
    _plain,
    _plot_split_balance,
    compute_tile_stats,
    gallery_tiles,
    plain_desc_stats,
    render_html,
    run_eda,
    tile_stats,
    tiles_with_aoi,
)

S = TILE_SIZE


def _tile(dem_fill_rows: int = 0, dem_zero_rows: int = 0, qa_pixels: int = 0) -> np.ndarray:
    tile = np.full((7, S, S), 900, np.int16)
    tile[5] = 0
    tile[6] = 12
    tile[6, :dem_fill_rows] = FILL_VALUE
    tile[6, dem_fill_rows : dem_fill_rows + dem_zero_rows] = 0
    tile[5].flat[:qa_pixels] = 1
    return tile


def _mask(kelp_pixels: int) -> np.ndarray:
    mask = np.zeros((S, S), np.uint8)
    mask.flat[-kelp_pixels:] = 1 if kelp_pixels else 0
    return mask


# tile id -> (split, aoi_id, tile, kelp pixels or None)
def _tiles() -> dict[str, tuple[str, int, np.ndarray, int | None]]:
    nodata = np.full((7, S, S), FILL_VALUE, np.int16)
    nodata[5] = 0
    return {
        "AA000001": ("train", 0, _tile(dem_fill_rows=10, dem_zero_rows=5, qa_pixels=123), 77),
        "AA000002": ("train", 0, _tile(dem_zero_rows=S, qa_pixels=TILE_PIXELS // 2 + 1), 73_500),
        "AA000003": ("train", 1, nodata, 0),
        "BB000001": ("test", 2, _tile(dem_fill_rows=2, qa_pixels=0), None),
        "BB000002": ("test", 0, _tile(dem_zero_rows=1, qa_pixels=5), None),
    }


def make_dataset(root: Path) -> DataLayout:
    layout = DataLayout(root)
    meta, aoi = [], []
    for tid, (split, aoi_id, tile, kelp) in _tiles().items():
        img = write_geotiff(layout.image_path(tid, split), tile, "int16")
        meta.append((tid, img.name, "satellite", split == "train"))
        if kelp is not None:
            msk = write_geotiff(layout.mask_path(tid), _mask(kelp), "uint8")
            meta.append((tid, msk.name, "kelp", True))
        aoi.append((tid, split, aoi_id, True))
    df = pd.DataFrame(meta, columns=["tile_id", "filename", "type", "in_train"])
    df["md5_hash"] = "0" * 32
    df["filesize_bytes"] = 1
    write_metadata(layout.metadata_csv, df)
    write_parquet(layout.aoi_table, pd.DataFrame(aoi, columns=["tile_id", "split", "aoi_id", "usable"]))
    return layout


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def eda(tmp_path_factory: pytest.TempPathFactory):
    layout = make_dataset(tmp_path_factory.mktemp("eda"))
    records = _Records()
    logger = logging.getLogger("kelpseg.prep.eda")
    logger.addHandler(records)
    try:
        result = run_eda(layout, workers=1, progress=False)
    finally:
        logger.removeHandler(records)
    return layout, result, pd.read_parquet(result.stats_path).set_index("tile_id"), records.messages


def test_tile_stats_exact_counts(eda) -> None:
    _, _, stats, _ = eda
    row = stats.loc["AA000001"]
    assert row["split"] == "train" and row["aoi_id"] == 0
    assert row["kelp_pixels"] == 77
    assert row["non_kelp_pixels"] == TILE_PIXELS - 77
    assert row["has_kelp"] and not row["high_kelp_pixels_pct"]
    assert row["kelp_pixels_pct"] == pytest.approx(77 / TILE_PIXELS)
    assert row["dem_nan_pixels"] == 10 * S
    assert row["dem_has_nans"]
    assert row["dem_nan_pixels_pct"] == pytest.approx(10 * S / TILE_PIXELS)
    assert row["dem_zero_pixels"] == 5 * S
    assert row["dem_zero_pixels_pct"] == pytest.approx(5 * S / TILE_PIXELS)
    assert row["water_pixels"] == 15 * S
    assert row["water_pixels_pct"] == pytest.approx(15 * S / TILE_PIXELS)
    assert not row["almost_all_water"]
    assert row["qa_corrupted_pixels"] == 123
    assert not row["qa_ok"]
    assert row["qa_corrupted_pixels_pct"] == pytest.approx(123 / TILE_PIXELS)
    assert not row["high_corrupted_pixels_pct"]


def test_thresholds(eda) -> None:
    _, _, stats, _ = eda
    row = stats.loc["AA000002"]
    assert row["kelp_pixels"] == 73_500 and row["high_kelp_pixels_pct"]  # 60% > 40%
    assert row["water_pixels"] == TILE_PIXELS and row["almost_all_water"]
    assert row["dem_nan_pixels"] == 0 and not row["dem_has_nans"]
    assert row["high_corrupted_pixels_pct"]  # just over half
    ok = stats.loc["BB000001"]
    assert ok["qa_ok"] and ok["qa_corrupted_pixels"] == 0


def test_nodata_tile_kept_with_warning(eda) -> None:
    _, result, stats, messages = eda
    assert result.all_nodata_tiles == ["AA000003"]
    assert any("AA000003" in m and "nodata" in m for m in messages)
    row = stats.loc["AA000003"]
    assert row["dem_nan_pixels"] == TILE_PIXELS and row["almost_all_water"]
    assert row["kelp_pixels"] == 0 and not row["has_kelp"]


def test_test_rows_have_missing_mask_fields(eda) -> None:
    _, _, stats, _ = eda
    assert list(stats.reset_index().columns) == list(STATS_COLUMNS)
    assert len(stats) == 5
    test = stats[stats["split"] == "test"]
    assert test["kelp_pixels"].isna().all() and test["kelp_pixels_pct"].isna().all()
    assert test["non_kelp_pixels"].isna().all()
    assert test["has_kelp"].isna().all() and test["high_kelp_pixels_pct"].isna().all()
    assert test["qa_corrupted_pixels"].tolist() == [0, 5]
    assert test["dem_zero_pixels"].tolist() == [0, S]
    train = stats[stats["split"] == "train"]
    assert train["has_kelp"].notna().all()


def test_outputs_exist_and_tables(eda) -> None:
    layout, result, _, _ = eda
    assert result.stats_path == layout.eda_stats
    assert result.n_tiles == 5
    for path in result.paths:
        assert path.exists() and path.stat().st_size > 0, path
        assert path.parent == layout.eda_dir
    assert set(result.tables) == {
        "desc_stats",
        "split_distribution",
        "qa_issues_proportion",
        "kelp_presence_proportion",
    }
    assert set(result.plots) == {*PLOTS, "gallery"}
    assert "corr_matrix" not in result.plots  # shares against their own flags: tautological
    splits = pd.read_parquet(result.tables["split_distribution"]).set_index("split")
    assert splits.loc["train", "tiles"] == 3 and splits.loc["test", "tiles"] == 2
    qa = pd.read_parquet(result.tables["qa_issues_proportion"]).set_index(["split", "qa_ok"])
    assert qa.loc[("train", True), "tiles"] == 1 and qa.loc[("train", False), "tiles"] == 2
    assert qa.loc[("test", True), "share"] == pytest.approx(0.5)
    kelp = pd.read_parquet(result.tables["kelp_presence_proportion"]).set_index("has_kelp")
    assert kelp.loc[True, "tiles"] == 2 and kelp.loc[False, "tiles"] == 1
    desc = pd.read_parquet(result.tables["desc_stats"])
    row = desc[(desc["split"] == "train") & (desc["column"] == "kelp_pixels")].iloc[0]
    assert row["count"] == 3 and row["max"] == 73_500
    # no leftovers from atomic writes
    assert not [p for p in layout.eda_dir.iterdir() if p.name.startswith(".")]


def test_html_is_self_contained(eda) -> None:
    _, result, _, _ = eda
    text = result.html_path.read_text()
    assert text.count("data:image/png;base64,") == len(PLOTS) + 1  # and the gallery
    assert "Synthetic data." not in text  # no truth/ folder beside raw/ here
    assert "<table" in text and "Overview" in text
    assert "AA000003" in text  # the nodata tile is named
    assert 'src="http' not in text and "src='http" not in text


def test_tile_stats_function(tmp_path: Path) -> None:
    tile = _tile(dem_fill_rows=1, dem_zero_rows=2, qa_pixels=7)
    img = write_geotiff(tmp_path / "X_satellite.tif", tile, "int16")
    msk = write_geotiff(tmp_path / "X_kelp.tif", _mask(3), "uint8")
    row = tile_stats(str(img), str(msk))
    assert (row["dem_nan_pixels"], row["dem_zero_pixels"], row["water_pixels"]) == (S, 2 * S, 3 * S)
    assert (row["qa_corrupted_pixels"], row["kelp_pixels"]) == (7, 3)
    assert tile_stats(str(img), None)["kelp_pixels"] is None


def test_parallel_matches_serial(eda) -> None:
    layout, result, _, _ = eda
    parallel, nodata = compute_tile_stats(tiles_with_aoi(layout), workers=2, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(result.stats_path), parallel)
    assert nodata == ["AA000003"]


def test_refuses_without_aoi_table(tmp_path: Path) -> None:
    layout = make_dataset(tmp_path)
    layout.aoi_table.unlink()
    with pytest.raises(
        StageNotRunError,
        match=r"aoi_groups\.parquet not found: run `kelpseg aoi-grouping` \(make aoi-grouping",
    ):
        run_eda(layout, workers=1, progress=False)


def test_refuses_stale_aoi_table(tmp_path: Path) -> None:
    layout = make_dataset(tmp_path)
    aoi = pd.read_parquet(layout.aoi_table)
    write_parquet(layout.aoi_table, aoi[aoi["tile_id"] != "BB000002"])
    with pytest.raises(StageNotRunError, match=r"no aoi_id for 1 tile.*BB000002.*make aoi-grouping"):
        run_eda(layout, workers=1, progress=False)


def _stats_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tile_id": ["T1", "T2", "T3", "T4", "T5", "X1"],
            "aoi_id": [1, 2, 3, 4, 5, 6],
            "split": ["train"] * 5 + ["test"],
            "kelp_pixels": [1000.0, 10.0, 0.0, 300.0, 0.0, np.nan],
            "has_kelp": [True, True, False, True, False, None],
            "high_kelp_pixels_pct": [False] * 5 + [None],
            "qa_corrupted_pixels": [0, 50, 9000, 0, 20, 99999],
            "qa_ok": [True, False, False, True, False, False],
            "dem_has_nans": [False] * 6,
            "almost_all_water": [False] * 6,
            "high_corrupted_pixels_pct": [False] * 6,
        }
    )


def test_gallery_picks_most_median_none_and_cloudiest() -> None:
    assert gallery_tiles(_stats_frame()) == {
        "most kelp": "T1",
        "median kelp": "T4",  # median of 1000, 10, 300
        "no kelp": "T5",  # the clearer of the two tiles without kelp
        "cloudiest": "T3",  # test tiles are not candidates
    }
    assert gallery_tiles(_stats_frame().query("split == 'test'")) == {}


def test_gallery_skips_tiles_the_split_drops_as_mislabelled() -> None:
    stats = _stats_frame()
    stats.loc[stats["tile_id"] == "T1", "high_kelp_pixels_pct"] = True  # 1000 px, over the threshold
    chosen = gallery_tiles(stats)
    assert chosen["most kelp"] == "T4"
    assert chosen["median kelp"] in {"T2", "T4"} and chosen["median kelp"] != "T1"


def test_descriptive_table_has_plain_names_and_percent() -> None:
    desc = pd.DataFrame(
        {
            "column": ["kelp_pixels", "kelp_pixels_pct", "some_new_stat"],
            "count": [5.0, 5.0, 5.0],
            "mean": [262.0, 0.0021, 3.0],
            "max": [1000.0, 0.0082, 4.0],
        }
    )
    out = plain_desc_stats(desc)
    assert out["per tile"].tolist() == ["kelp (px)", "kelp share (%)", "some new stat"]
    assert out["tiles"].tolist() == [5, 5, 5]
    assert out.loc[1, "mean"] == pytest.approx(0.21) and out.loc[1, "max"] == pytest.approx(0.82)
    assert out.loc[0, "mean"] == 262.0  # counts untouched


def test_split_balance_flags_are_plain_labels() -> None:
    fig = _plot_split_balance(_stats_frame())
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert labels == ["some QA-flagged pixels", "over 40% QA-flagged", "some DEM nodata", "over 98% water"]
    # 3 of the 5 train tiles have QA-flagged pixels (qa_ok False): the first train bar is 60 %.
    heights = [round(b.get_height(), 1) for b in fig.axes[1].patches]
    assert heights[0] == 60.0


def test_overview_gives_hectares_and_percent() -> None:
    rows = dict(_overview(_stats_frame(), []).itertuples(index=False))
    assert rows["train tiles with kelp (%)"] == 60.0
    assert rows["kelp area per train tile: mean (ha)"] == pytest.approx(1310 / 5 * 0.09, abs=0.005)
    assert rows["kelp area per train tile: median (ha)"] == pytest.approx(10 * 0.09)
    assert rows["kelp area of all train tiles (ha)"] == pytest.approx(117.9)
    assert rows["kelp share of train pixels (%)"] == pytest.approx(round(100 * 1310 / (5 * 350 * 350), 3))


def test_plain_labels_in_the_tables() -> None:
    table = pd.DataFrame(
        {"split": ["train", "train"], "qa_ok": [False, True], "tiles": [2, 1], "share": [2 / 3, 1 / 3]}
    )
    plain = _plain(table)
    assert list(plain.columns) == ["split", "no cloud / bad pixel", "tiles", "share (%)"]
    assert plain["no cloud / bad pixel"].tolist() == ["no", "yes"]
    assert plain["share (%)"].tolist() == [66.7, 33.3]


def test_synthetic_data_is_announced(eda) -> None:
    _, result, _, _ = eda
    stats = pd.read_parquet(result.stats_path)
    page = render_html(
        stats, {k: pd.read_parquet(v) for k, v in result.tables.items()}, {}, [], synthetic=True
    )
    assert "Synthetic data." in page and "kelpseg synth" in page


def test_integer_ticks_on_counts_but_not_on_shares() -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    counts, shares = fig.subplots(1, 2)
    counts.set_ylabel("train tiles")
    shares.set_ylabel("share of the split's tiles")
    shares.plot([0, 1], [0.0, 0.6])
    _integer_counts(fig)
    assert counts.yaxis.get_major_locator()._integer
    assert not shares.yaxis.get_major_locator()._integer
    assert len([t for t in shares.get_yticks() if 0 <= t <= 0.6]) > 2  # not just 0 and 1
