"""Whole scenes end to end with a tiny trained run: stitching, outputs, areas, AOI, time series."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import torch

from builders import tiny_run_dir
from kelpseg.errors import KelpsegError
from kelpseg.infer.predict import InferenceOptions, predict_folder, transforms_in_workers
from kelpseg.io.tiles import write_geotiff
from kelpseg.scene.c2l2 import open_scene
from kelpseg.scene.mapping import (
    SceneOptions,
    _predict_into,
    check_run,
    load_members,
    map_scene,
    window_probabilities,
)
from kelpseg.scene.outputs import NODATA
from kelpseg.scene.synthetic import write_synthetic_scene
from kelpseg.scene.timeseries import map_series
from kelpseg.scene.windows import window_grid

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "data" / "landsat-c2l2"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/data/landsat-c2l2")
L8 = "LC08_L2SP_008059_20191201_20200825_02_T1"
FAST = InferenceOptions(num_workers=0, progress=False, batch_size=4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory):
    return write_synthetic_scene(tmp_path_factory.mktemp("scene"), 760, 700, seed=3, cloud_fraction=0.15)


class _Capture:
    """Stands in for the output writer: keeps the stitched float probabilities."""

    def __init__(self, height: int, width: int) -> None:
        self.prob = np.full((height, width), np.nan, np.float32)
        self.rows_seen = 0

    def write(self, strip) -> None:
        self.prob[strip.row : strip.row + strip.prob.shape[0]] = strip.prob
        self.rows_seen += strip.prob.shape[0]


def _stitched(
    scene_folder: Path, run_dir: Path, overlap: float, inference: InferenceOptions = FAST
) -> tuple[np.ndarray, list]:
    source = open_scene(scene_folder)
    options = SceneOptions(overlap=overlap, skip_land=False, inference=inference)
    runs, weights, _, _ = load_members([run_dir], options)
    grid = window_grid(source.height, source.width, 350, overlap)
    capture = _Capture(source.height, source.width)
    _predict_into(capture, source, runs, weights, grid, (0, 0), options)
    assert capture.rows_seen == source.height  # every row handed out exactly once
    return capture.prob, runs


def test_zero_overlap_stitching_equals_predict_on_the_same_windows(
    scene, run_dir: Path, tmp_path: Path
) -> None:
    stitched, _ = _stitched(scene.folder, run_dir, 0.0)
    source = open_scene(scene.folder)
    grid = window_grid(source.height, source.width, 350, 0.0)
    tiles = tmp_path / "tiles"
    empty = set()
    with source.open() as reader:
        for k, (r, c) in enumerate(grid.windows()):
            px = reader.read(r, c, 350, 350)
            write_geotiff(tiles / f"W{k:03d}_satellite.tif", px.stack, "int32")
            if not px.valid.any():
                empty.add(k)
    assert len(empty) < len(grid)
    predict_folder(run_dir, tiles, tmp_path / "pred", soft=True, options=FAST)
    for k, (r, c) in enumerate(grid.windows()):
        if k in empty:  # all fill: not sent through the model (output nodata there anyway)
            assert np.all(stitched[r : r + 350, c : c + 350] == 0)
            continue
        with rasterio.open(tmp_path / "pred" / f"W{k:03d}_kelp.tif") as src:
            tile = src.read(1)
        h, w = min(350, source.height - r), min(350, source.width - c)
        np.testing.assert_allclose(stitched[r : r + h, c : c + w], tile[:h, :w], rtol=0, atol=1e-6)


def test_inputs_built_in_loader_workers_equal_the_main_process_path(scene, run_dir: Path) -> None:
    """With a loader worker the model inputs are built there (the collate step); same stitch."""
    in_main, _ = _stitched(scene.folder, run_dir, 0.5)
    workers = InferenceOptions(num_workers=1, progress=False, batch_size=4)
    in_worker, _ = _stitched(scene.folder, run_dir, 0.5, workers)
    assert transforms_in_workers(workers, torch.device("cpu"))
    assert np.isfinite(in_worker).all() and in_worker.max() > 0
    np.testing.assert_allclose(in_worker, in_main, rtol=0, atol=1e-6)


def test_half_overlap_has_no_seams(scene, run_dir: Path) -> None:
    """Pixels on window borders agree with one window centred on them (tolerance 0.02 mean |Δp|).

    A window's prediction is least reliable near its own border (the model sees padding or
    another window's content only on one side); blending with the Hann weights hands those
    pixels to the neighbouring window whose centre they are near.
    """
    blended, runs = _stitched(scene.folder, run_dir, 0.5)
    hard, _ = _stitched(scene.folder, run_dir, 0.0)
    source = open_scene(scene.folder)
    errors_blend, errors_hard = [], []
    with source.open() as reader, torch.inference_mode():
        for r, c in [(350, 175), (350, 300), (175, 350), (300, 350), (350, 350)]:  # on zero-overlap borders
            raw = reader.read(r - 175, c - 175, 350, 350).stack.astype(np.float32)
            raw[raw == -32768] = np.nan
            centred = window_probabilities(runs[0], torch.from_numpy(raw)[None], FAST)[0].numpy()
            patch = (slice(167, 183), slice(167, 183))  # 16 x 16 around the border pixel
            truth = centred[patch]
            sl = (slice(r - 8, r + 8), slice(c - 8, c + 8))
            errors_blend.append(np.abs(blended[sl] - truth).mean())
            errors_hard.append(np.abs(hard[sl] - truth).mean())
    assert max(errors_blend) <= 0.02, errors_blend
    assert np.mean(errors_blend) <= np.mean(errors_hard) + 1e-6


def test_scene_outputs_areas_polygons_and_rerun(scene, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    options = SceneOptions(overlap=0.5, min_mapping_unit=1, threshold=0.5, dem=scene.dem, inference=FAST)
    result = map_scene(scene.folder, [run_dir], out, options)
    paths = result.paths
    with rasterio.open(paths["mask"]) as src, rasterio.open(scene.truth) as truth:
        mask = src.read(1)
        assert src.crs.to_epsg() == 32611 and src.transform == truth.transform
        assert src.nodata == NODATA and src.colormap(1)[1][1] > 200 and src.overviews(1)
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.compression.value == "DEFLATE"
        assert src.tags()["threshold"] == "0.5" and src.tags()["overlap"] == "0.5"
        fill = truth.read(1) == 255
    with rasterio.open(paths["probability"]) as src:
        prob = src.read(1)
        assert src.dtypes[0] == "uint8" and src.crs.to_epsg() == 32611 and src.is_tiled
    assert fill.any() and np.all(mask[fill] == NODATA) and np.all(prob[fill] == NODATA)
    assert prob[~fill].max() <= 100 and set(np.unique(mask)) <= {0, 1, NODATA}
    kelp = int((mask == 1).sum())
    assert kelp > 0
    summary = json.loads(paths["scene_summary"].read_text())
    assert summary["kelp_ha"] == pytest.approx(kelp * 900 / 1e4, abs=1e-3)
    assert summary["pixels"]["kelp"] == kelp
    assert summary["fill_ha"] == pytest.approx(fill.sum() * 0.09, abs=1e-3)
    assert summary["region_ha"] == pytest.approx(760 * 700 * 0.09)
    assert (summary["date"], summary["wrs_path"], summary["wrs_row"]) == ("2020-07-15", 42, 36)
    # polygons: every kelp pixel in one polygon (mmu 1), geodesic area within 0.5 % of pixels x 900 m2
    info = pyogrio.read_info(paths["polygons"])
    assert info["crs"] == "EPSG:32611" and info["features"] == summary["n_polygons"]
    _, _, _, fields = pyogrio.raw.read(paths["polygons"])
    names = list(info["fields"])
    assert fields[names.index("n_pixels")].sum() == kelp
    geodesic = fields[names.index("area_m2")].sum()
    assert geodesic == pytest.approx(kelp * 900.0, rel=0.005)
    assert summary["kelp_ha_polygons"] == pytest.approx(geodesic / 1e4, abs=1e-3)
    assert np.all(fields[names.index("mean_probability")] >= 0.5)
    rows = list(csv.DictReader(paths["scene_summary_row"].open()))
    assert len(rows) == 1 and float(rows[0]["kelp_ha"]) == summary["kelp_ha"]
    # a failing re-run (AOI outside the scene) leaves the earlier outputs as they were
    before = {k: p.read_bytes() for k, p in paths.items()}
    far = tmp_path / "far.geojson"
    far.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[10, 50], [10.1, 50], [10.1, 50.1], [10, 50]]],
                        },
                    }
                ],
            }
        )
    )
    with pytest.raises(KelpsegError, match=r"far.geojson: the AOI lies outside the scene"):
        map_scene(scene.folder, [run_dir], out, SceneOptions(aoi=far, inference=FAST))
    assert {k: p.read_bytes() for k, p in paths.items()} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())


def test_aoi_limits_and_clips_the_outputs(scene, run_dir: Path, tmp_path: Path) -> None:
    from pyproj import Transformer

    to_ll = Transformer.from_crs(32611, 4326, always_xy=True)
    source = open_scene(scene.folder)
    t = source.affine
    corners = [t * (c, r) for c, r in [(100, 120), (400, 120), (400, 500), (100, 500)]]
    ring = [list(to_ll.transform(x, y)) for x, y in corners]
    aoi = tmp_path / "site.geojson"
    aoi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"name": "bay"},
                        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
                    }
                ],
            }
        )
    )
    result = map_scene(
        scene.folder, [run_dir], tmp_path / "out", SceneOptions(aoi=aoi, overlap=0.0, inference=FAST)
    )
    with rasterio.open(result.paths["mask"]) as src:
        mask = src.read(1)
        assert src.height < 400 and src.width < 320  # the AOI's bounding box, not the scene
        assert src.transform.c >= t.c + 99 * 30 and src.crs.to_epsg() == 32611
    assert (mask == NODATA).any()  # outside the (lon/lat-straight) polygon
    assert [r["aoi"] for r in result.rows] == ["all", "bay"]
    assert result.rows[1]["region_ha"] == pytest.approx(result.rows[0]["region_ha"])


def test_real_c2l2_scene_keeps_crs_transform_and_mtl_facts(run_dir: Path, tmp_path: Path) -> None:
    result = map_scene(FIXTURES / L8, [run_dir], tmp_path, SceneOptions(overlap=0.0, inference=FAST))
    source = open_scene(FIXTURES / L8)
    for key in ("probability", "mask"):
        with rasterio.open(result.paths[key]) as src:
            assert src.crs.to_epsg() == 32618 and src.transform == source.affine
            data = src.read(1)
        with rasterio.open(source.bands["QA"]) as qa:
            fill = (qa.read(1) & 1) == 1
        assert np.all(data[fill] == NODATA) and (data[~fill] != NODATA).any()
    assert pyogrio.read_info(result.paths["polygons"])["crs"] == "EPSG:32618"
    row = next(csv.DictReader(result.paths["scene_summary_row"].open()))
    assert (row["date"], row["wrs_path"], row["wrs_row"], row["sensor"]) == ("2019-12-01", "8", "59", "OLI")
    assert row["time"] == "15:13:51.8610990Z" and row["scene_id"] == L8
    # pixel area comes from the transform: 444.79 m x 453.57 m here
    summary = json.loads(result.paths["scene_summary"].read_text())
    assert summary["region_ha"] == pytest.approx(512 * 512 * 444.78515625 * 453.57421875 / 1e4, rel=1e-9)


def test_time_series_one_row_per_scene(run_dir: Path, tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    for date, sensor, vigour in [
        ("2019-08-01", "ETM+", 0.6),
        ("2020-07-15", "OLI", 1.0),
        ("2021-07-20", "OLI-2", 0.3),
    ]:
        write_synthetic_scene(
            scenes, 300, 300, seed=5, date=date, sensor=sensor, kelp_vigour=vigour, with_dem=False
        )
    out = tmp_path / "series"
    csv_path, png, rows = map_series(scenes, [run_dir], out, SceneOptions(overlap=0.0, inference=FAST))
    table = list(csv.DictReader(csv_path.open()))
    assert [r["date"] for r in table] == ["2019-08-01", "2020-07-15", "2021-07-20"]
    assert [r["sensor"] for r in table] == ["ETM+", "OLI", "OLI-2"]
    assert all(float(r["region_ha"]) == pytest.approx(300 * 300 * 0.09) for r in table)
    assert png.stat().st_size > 10_000
    again = map_series(scenes, [run_dir], out, SceneOptions(overlap=0.0, inference=FAST))[2]
    assert [r["kelp_ha"] for r in again] == [r["kelp_ha"] for r in rows]  # resumed from the summaries


def test_run_channels_that_a_scene_cannot_build(run_dir: Path) -> None:
    runs, *_ = load_members([run_dir], SceneOptions(inference=FAST))
    run = runs[0]
    run.transform.bands = [*run.transform.bands, "THERMAL"]
    with pytest.raises(KelpsegError, match=r"channel\(s\) \['THERMAL'\] cannot be built from a scene"):
        check_run(run, 350, has_dem=True)
    run.transform.bands = run.transform.bands[:-1]
    with pytest.raises(KelpsegError, match="multiples of 32"):
        check_run(run, 500, has_dem=True)
    check_run(run, 512, has_dem=True)
