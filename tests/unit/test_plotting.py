"""Sample plotting: robust scaling, composites, files written per tile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import write_dataset
from kelpseg import plotting as kelpseg_plotting
from kelpseg.bands import BANDS, FILL_VALUE, TILE_SIZE
from kelpseg.errors import KelpsegError
from kelpseg.io.catalog import load_catalog
from kelpseg.prep import plotting
from kelpseg.prep.plotting import COMPOSITES, composite, plot_samples, robust_scale

TRAIN = ["AA000001", "AA000002"]
TEST = ["ZZ000001"]


def test_robust_scale_ignores_nan_and_fill() -> None:
    x = np.arange(100, dtype=np.float32)
    arr = np.concatenate([x, [np.nan, FILL_VALUE, np.inf]]).reshape(1, -1)
    out = robust_scale(arr)
    p2, p98 = np.percentile(x, [2, 98])  # 1.98 and 97.02: the invalid values play no part
    np.testing.assert_allclose(out[0, :100], np.clip((x - p2) / (p98 - p2), 0, 1), atol=1e-6)
    assert np.isnan(out[0, 100:]).all()
    assert out[0, 0] == 0.0 and out[0, 99] == 1.0


def test_robust_scale_is_not_flattened_by_dem_nodata() -> None:
    dem = np.tile(np.linspace(0, 300, 50, dtype=np.float32), (50, 1))
    dem[:10] = FILL_VALUE  # DEM beyond its coverage
    out = robust_scale(dem)
    land = out[10:]
    assert land.min() == 0.0 and land.max() == 1.0
    assert land.std() > 0.25  # the reference's min-before-clip bug squashed this into [0.97, 1]
    assert np.isnan(out[:10]).all()


def test_robust_scale_constant_and_empty_channels() -> None:
    arr = np.stack([np.full((4, 4), 5.0), np.full((4, 4), np.nan)]).astype(np.float32)
    out = robust_scale(arr)
    np.testing.assert_array_equal(out[0], 0.0)
    assert np.isnan(out[1]).all()
    with pytest.raises(ValueError, match="shape"):
        robust_scale(np.zeros(5))


def test_robust_scale_exclude_keeps_bright_clouds_out_of_the_stretch() -> None:
    x = np.tile(np.arange(100, dtype=np.float32), (2, 1))
    x[1] = 10_000  # a cloud row
    cloud = np.zeros_like(x, dtype=bool)
    cloud[1] = True
    out = robust_scale(x, exclude=cloud)
    p2, p98 = np.percentile(np.arange(100), [2, 98])
    np.testing.assert_allclose(out[0], np.clip((np.arange(100) - p2) / (p98 - p2), 0, 1), atol=1e-6)
    np.testing.assert_array_equal(out[1], 1.0)  # saturates instead of darkening the surface


def test_composite_band_order_and_fill() -> None:
    rng = np.random.default_rng(0)
    tile = rng.uniform(0, 1000, size=(7, 20, 20)).astype(np.float32)
    tile[BANDS.index("NIR"), 0, 0] = np.nan
    img = composite(tile, COMPOSITES["false_color"])
    assert img.shape == (20, 20, 3) and img.dtype == np.float32
    for channel, band in enumerate(("NIR", "R", "G")):
        expected = np.nan_to_num(robust_scale(tile[BANDS.index(band)]), nan=0.0)
        np.testing.assert_allclose(img[..., channel], expected)
    assert img[0, 0, 0] == 0.0  # missing pixel shown black
    assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    custom = composite(tile[[2, 1]], ("NIR",), positions={"R": 0, "NIR": 1})
    np.testing.assert_allclose(custom[..., 0], img[..., 0])
    with pytest.raises(ValueError, match="SWIR"):
        composite(tile[:2], ("SWIR",), positions={"R": 0, "NIR": 1})


def test_to_uint8() -> None:
    out = plotting.to_uint8(np.array([[[0.0], [0.5], [np.nan], [1.2]]]))
    assert out.dtype == np.uint8 and out.shape == (1, 4)
    np.testing.assert_array_equal(out, [[0, 128, 0, 255]])


@pytest.fixture
def layout(tmp_path: Path):
    return write_dataset(tmp_path, TRAIN, TEST)


def test_plot_samples_writes_composites_and_panels(layout) -> None:
    out = plot_samples(layout, workers=2, progress=False, dpi=50)
    assert out == layout.plots_dir
    for tid in TRAIN + TEST:
        for name in COMPOSITES:
            path = layout.composites_dir / name / f"{tid}_{name}.png"
            with Image.open(path) as img:
                assert img.size == (TILE_SIZE, TILE_SIZE)
                assert img.mode == ("L" if name == "dem" else "RGB")
    dem_png = np.asarray(Image.open(layout.composites_dir / "dem" / f"{TRAIN[0]}_dem.png"))
    assert dem_png[:20].max() == 0  # nodata rows black
    assert dem_png[20:].std() > 40  # real relief spread over the grey range, not flat
    with Image.open(layout.plots_dir / f"{TRAIN[0]}_plot.png") as train_fig:
        assert train_fig.size == (660, 350)  # 4 x 3.3 in by 7 in at 50 dpi: two rows, mask column
    with Image.open(layout.plots_dir / f"{TEST[0]}_plot.png") as test_fig:
        assert test_fig.size == (495, 350)  # no mask column for a test tile
    assert not list(layout.plots_dir.glob(".*"))  # no temporary files left behind


def test_plot_samples_limits(layout) -> None:
    plot_samples(layout, tile_ids=[TEST[0], TRAIN[1]], workers=1, progress=False, dpi=20)
    assert sorted(p.name for p in layout.plots_dir.iterdir()) == [
        f"{TRAIN[1]}_plot.png",
        f"{TEST[0]}_plot.png",
    ]
    catalog = load_catalog(layout)
    picked = plotting.select_tiles(catalog, n=2, seed=3)
    assert len(picked) == 2
    assert picked["tile_id"].tolist() == [t for t in catalog["tile_id"] if t in set(picked["tile_id"])]
    assert picked.equals(plotting.select_tiles(catalog, n=2, seed=3))
    assert len(plotting.select_tiles(catalog, n=10)) == 3


def test_plot_samples_unknown_id_and_bad_n(layout) -> None:
    with pytest.raises(KelpsegError, match=r"XX999999.*metadata_fTq0l2T\.csv"):
        plot_samples(layout, tile_ids=[TRAIN[0], "XX999999"], progress=False)
    with pytest.raises(KelpsegError, match="at least 1"):
        plot_samples(layout, n=0, progress=False)
    assert not layout.plots_dir.exists() or not any(layout.plots_dir.iterdir())


def test_panel_figure_mask_overlay() -> None:
    tile = np.random.default_rng(1).uniform(7000, 9000, size=(7, 40, 40)).astype(np.float32)
    tile[5] = 0
    mask = np.zeros((40, 40), np.uint8)
    mask[5:10, 5:10] = 1
    fig = plotting.panel_figure(tile, mask, title="t")
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert "Kelp mask (25 px = 2.2 ha)" in axes  # 25 px of 30 m x 30 m
    overlay = axes["Kelp mask (25 px = 2.2 ha)"].get_images()[-1].get_array()
    assert overlay.shape == (40, 40, 4)
    assert (overlay[..., 3] > 0).sum() == 25
    no_mask = plotting.panel_figure(tile)
    assert len([ax for ax in no_mask.axes if ax.get_title()]) == 6


def test_panel_figure_has_two_rows_ndvi_from_reflectance_and_a_dem_in_metres() -> None:
    rng = np.random.default_rng(2)
    tile = rng.uniform(7000, 12000, size=(7, 60, 60)).astype(np.float32)
    tile[5] = 0
    tile[6] = rng.uniform(-5, 80, size=(60, 60))
    fig = plotting.panel_figure(tile)
    rows = {round(ax.get_position().y0, 2) for ax in fig.axes if ax.get_title()}
    assert len(rows) == 2
    titled = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    ndvi_ax = titled["NDVI (reflectance, 2-98% stretch)"]
    shown = ndvi_ax.get_images()[0]
    vmin, vmax = shown.get_clim()
    expected = kelpseg_plotting.ndvi_reflectance(tile)
    assert vmin == pytest.approx(np.percentile(expected, 2), abs=1e-5)
    assert vmax == pytest.approx(np.percentile(expected, 98), abs=1e-5)
    dem_ax = next(t for t in titled if t.startswith("Elevation (m"))
    assert titled[dem_ax].get_images()[0].get_clim() == pytest.approx(
        (tile[6].min(), tile[6].max()), abs=1e-3
    )
    assert any(t.get_text() == "1 km" for t in titled["True colour (R,G,B)"].texts)  # scale bar


def test_reflectance_and_ndvi_follow_the_level2_scaling() -> None:
    dn = np.array([[7273.0, 40000.0, -32768.0]], dtype=np.float32)
    refl = kelpseg_plotting.reflectance(dn)
    assert refl[0, 0] == pytest.approx(7273 * 2.75e-5 - 0.2, abs=1e-6)
    assert refl[0, 1] == pytest.approx(0.9, abs=1e-6) and np.isnan(refl[0, 2])
    tile = np.zeros((7, 1, 1), np.float32)
    tile[BANDS.index("NIR")] = (0.3 + 0.2) / 2.75e-5
    tile[BANDS.index("R")] = (0.1 + 0.2) / 2.75e-5
    assert kelpseg_plotting.ndvi_reflectance(tile)[0, 0] == pytest.approx(0.5, abs=1e-4)


def test_outcome_overlay_colours_tp_fp_fn() -> None:
    pred = np.array([[1, 1, 0, 0]], bool)
    truth = np.array([[1, 0, 1, 0]], bool)
    out = kelpseg_plotting.outcome_overlay(pred, truth)
    assert tuple(out[0, 0, :3]) == pytest.approx(kelpseg_plotting.TP_COLOR)
    assert tuple(out[0, 1, :3]) == pytest.approx(kelpseg_plotting.FP_COLOR)
    assert tuple(out[0, 2, :3]) == pytest.approx(kelpseg_plotting.FN_COLOR)
    assert out[0, 3, 3] == 0
