"""Reading real Landsat C2 L2 product files: sensors, band map, QA bits, fill, metadata, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from kelpseg.bands import BAND_INDEX, FILL_VALUE
from kelpseg.errors import KelpsegError
from kelpseg.scene.c2l2 import band_map, open_scene, qa_bit_mask
from kelpseg.scene.dem import DemReader, check_dem

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "data" / "landsat-c2l2"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/data/landsat-c2l2")
L8 = "LC08_L2SP_008059_20191201_20200825_02_T1"
L8_POLAR = "LC08_L2SR_099120_20191129_20201016_02_T2"
pytestmark = pytest.mark.skipif(not (FIXTURES / L8).is_dir(), reason="shared C2 L2 fixtures not present")

# OLI band number -> TM/ETM+ band number of the same wavelength (SWIR1, NIR, R, G, B)
OLI_TO_TM = {6: 5, 5: 4, 4: 3, 3: 2, 2: 1}


def _band(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _as_sensor(tmp: Path, prefix: str, spacecraft: str, with_mtl: bool) -> Path:
    """A copy of the L8 scene renamed as another sensor's product (TM/ETM+ band numbers)."""
    new_id = L8.replace("LC08", prefix)
    folder = tmp / new_id
    folder.mkdir()
    tm = prefix in ("LT05", "LE07")
    names = {}
    for oli, other in OLI_TO_TM.items():
        number = other if tm else oli
        src = FIXTURES / L8 / f"{L8}_SR_B{oli}.TIF"
        names[number] = f"{new_id}_SR_B{number}.TIF"
        shutil.copy(src, folder / names[number])
    shutil.copy(FIXTURES / L8 / f"{L8}_QA_PIXEL.TIF", folder / f"{new_id}_QA_PIXEL.TIF")
    if with_mtl:
        mtl = json.loads((FIXTURES / L8 / f"{L8}_MTL.json").read_text())
        meta = mtl["LANDSAT_METADATA_FILE"]
        meta["IMAGE_ATTRIBUTES"]["SPACECRAFT_ID"] = spacecraft
        contents = {k: v for k, v in meta["PRODUCT_CONTENTS"].items() if not k.startswith("FILE_NAME_BAND")}
        contents.update({f"FILE_NAME_BAND_{n}": name for n, name in names.items()})
        contents["LANDSAT_PRODUCT_ID"] = new_id
        contents["FILE_NAME_QUALITY_L1_PIXEL"] = f"{new_id}_QA_PIXEL.TIF"
        meta["PRODUCT_CONTENTS"] = contents
        (folder / f"{new_id}_MTL.json").write_text(json.dumps(mtl))
    return folder


def test_landsat8_scene_sensor_band_map_metadata_and_grid() -> None:
    source = open_scene(FIXTURES / L8)
    assert (source.meta.spacecraft, source.meta.sensor) == ("LANDSAT_8", "OLI")
    assert source.bands["SWIR"].endswith(f"{L8}_SR_B6.TIF") and source.bands["QA"].endswith("_QA_PIXEL.TIF")
    assert band_map("OLI") == {"SWIR": "SR_B6", "NIR": "SR_B5", "R": "SR_B4", "G": "SR_B3", "B": "SR_B2"}
    assert (source.meta.wrs_path, source.meta.wrs_row, source.meta.date) == (8, 59, "2019-12-01")
    assert source.meta.time == "15:13:51.8610990Z" and source.meta.cloud_cover == pytest.approx(81.02)
    assert source.crs.to_epsg() == 32618 and (source.width, source.height) == (512, 512)
    assert source.affine.c == 378285.0 and source.affine.a == pytest.approx(444.78515625)


@pytest.mark.parametrize("suffix", ["MTL.json", "MTL.txt", "MTL.xml"])
def test_every_mtl_format_gives_the_same_facts(suffix: str) -> None:
    source = open_scene(FIXTURES / L8_POLAR / f"{L8_POLAR}_{suffix}")
    meta = source.meta
    assert (meta.sensor, meta.wrs_path, meta.wrs_row, meta.date) == ("OLI", 99, 120, "2019-11-29")
    assert meta.processing_level == "L2SR" and meta.category == "T2"
    assert source.crs.to_epsg() == 3031


@pytest.mark.parametrize(
    ("prefix", "spacecraft", "sensor", "with_mtl"),
    [
        ("LT05", "LANDSAT_5", "TM", True),
        ("LE07", "LANDSAT_7", "ETM+", True),
        ("LC09", "LANDSAT_9", "OLI-2", True),
        ("LT05", "", "TM", False),
        ("LE07", "", "ETM+", False),
    ],
)
def test_other_sensors_map_their_own_band_numbers(
    tmp_path: Path, prefix: str, spacecraft: str, sensor: str, with_mtl: bool
) -> None:
    folder = _as_sensor(tmp_path, prefix, spacecraft, with_mtl)
    source = open_scene(folder)
    assert source.meta.sensor == sensor
    expected = "SR_B5" if sensor in ("TM", "ETM+") else "SR_B6"
    assert source.bands["SWIR"].endswith(f"_{expected}.TIF")
    assert source.bands["B"].endswith("_SR_B1.TIF" if sensor in ("TM", "ETM+") else "_SR_B2.TIF")
    with source.open() as reader:
        px = reader.read(0, 0, 512, 512)
    # whatever the sensor's numbering, SWIR holds the OLI SR_B6 pixels and NIR the SR_B5 pixels
    oli_swir = _band(FIXTURES / L8 / f"{L8}_SR_B6.TIF").astype(np.int32)
    ok = px.valid
    assert np.array_equal(px.stack[BAND_INDEX["SWIR"]][ok], oli_swir[ok])
    assert np.array_equal(px.stack[BAND_INDEX["NIR"]][ok], _band(FIXTURES / L8 / f"{L8}_SR_B5.TIF")[ok])


def test_qa_bits_fill_and_water_from_qa_pixel() -> None:
    qa = _band(FIXTURES / L8 / f"{L8}_QA_PIXEL.TIF").astype(np.int64)
    nir = _band(FIXTURES / L8 / f"{L8}_SR_B5.TIF").astype(np.int64)
    source = open_scene(FIXTURES / L8)
    with source.open() as reader:
        px = reader.read(0, 0, 512, 512)
    fill = (qa & 1) == 1
    assert fill.any() and (~fill).any()
    cloudy = (qa & ((1 << 3) | (1 << 1) | (1 << 4) | (1 << 2))) != 0
    band = px.stack[BAND_INDEX["QA"]]
    assert np.all(band[fill] == FILL_VALUE)
    assert np.array_equal(band[~fill], cloudy[~fill].astype(np.int32))
    spectral = px.stack[:5]
    assert np.all(spectral[:, fill] == FILL_VALUE)  # QA fill blanks every band
    assert np.all(px.stack[BAND_INDEX["NIR"]][nir == 0] == FILL_VALUE)  # SR nodata 0 -> -32768
    assert np.array_equal(px.stack[BAND_INDEX["NIR"]][(nir > 0) & ~fill], nir[(nir > 0) & ~fill])
    assert np.array_equal(px.water, ((qa >> 7) & 1).astype(bool) & ~fill)
    assert np.all(px.stack[BAND_INDEX["DEM"]] == FILL_VALUE)  # no DEM given
    # a different bit set: only cloud (bit 3)
    only_cloud = open_scene(FIXTURES / L8, qa_bits=["cloud"])
    with only_cloud.open() as reader:
        b = reader.read(0, 0, 512, 512).stack[BAND_INDEX["QA"]]
    assert np.array_equal(b[~fill], (((qa >> 3) & 1) == 1)[~fill].astype(np.int32))
    assert qa_bit_mask(["cloud", "dilated_cloud", 4]) == 0b11010


def test_windows_past_the_border_read_as_fill() -> None:
    with open_scene(FIXTURES / L8).open() as reader:
        px = reader.read(400, 400, 200, 200)
        full = reader.read(0, 0, 512, 512)
    assert px.stack.shape == (7, 200, 200)
    assert np.all(px.stack[:, 112:, :] == FILL_VALUE) and np.all(px.stack[:, :, 112:] == FILL_VALUE)
    assert np.array_equal(px.stack[:, :112, :112], full.stack[:, 400:, 400:])


def test_tar_of_a_scene_reads_like_the_folder(tmp_path: Path) -> None:
    import tarfile

    tar = tmp_path / f"{L8}.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted((FIXTURES / L8).iterdir()):
            tf.add(p, arcname=p.name)
    a, b = open_scene(tar), open_scene(FIXTURES / L8)
    assert a.meta == b.meta
    with a.open() as ra, b.open() as rb:
        assert np.array_equal(ra.read(0, 0, 64, 64).stack, rb.read(0, 0, 64, 64).stack)


# ---- bad input -----------------------------------------------------------------------------------
def _copy(tmp: Path, name: str = L8) -> Path:
    dst = tmp / name
    shutil.copytree(FIXTURES / name, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_missing_qa_file_names_the_file(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / f"{L8}_QA_PIXEL.TIF").unlink()
    with pytest.raises(KelpsegError, match=rf"{L8}_QA_PIXEL.TIF: missing .*QA band"):
        open_scene(folder)


def test_missing_band_without_mtl(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    for p in folder.glob("*MTL*"):
        p.unlink()
    (folder / f"{L8}_SR_B6.TIF").unlink()
    with pytest.raises(KelpsegError, match=r"no .*_SR_B6.TIF \(the SWIR band of Landsat OLI\)"):
        open_scene(folder)


def test_mtl_naming_an_absent_file(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    path = folder / f"{L8}_MTL.json"
    mtl = json.loads(path.read_text())
    mtl["LANDSAT_METADATA_FILE"]["PRODUCT_CONTENTS"]["FILE_NAME_BAND_5"] = f"{L8}_SR_B5_elsewhere.TIF"
    path.write_text(json.dumps(mtl))
    expected = r"SR_B5_elsewhere.TIF: missing \(.*MTL.json needs it as the NIR band"
    with pytest.raises(KelpsegError, match=expected):
        open_scene(folder)


def test_mixed_scenes_in_one_folder(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    shutil.copy(FIXTURES / L8_POLAR / f"{L8_POLAR}_QA_PIXEL.TIF", folder)
    with pytest.raises(KelpsegError, match=r"holds files of 2 scenes .*one scene per folder"):
        open_scene(folder)


def test_stack_without_crs_and_with_wrong_band_count(tmp_path: Path) -> None:
    profile = {"driver": "GTiff", "dtype": "int16", "width": 8, "height": 8}
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", count=7, **profile) as dst:
        dst.write(np.zeros((7, 8, 8), np.int16))
    with pytest.raises(KelpsegError, match=r"bare.tif: GeoTIFF without a CRS"):
        open_scene(bare)
    five = tmp_path / "five.tif"
    transform = rasterio.Affine(30, 0, 500000, 0, -30, 4000000)
    with rasterio.open(five, "w", count=5, crs="EPSG:32611", transform=transform, **profile) as dst:
        dst.write(np.zeros((5, 8, 8), np.int16))
    with pytest.raises(KelpsegError, match=r"five.tif: expected a 7-band stack .* got 5 band"):
        open_scene(five)


def test_dem_outside_the_scene_and_dem_reprojection(tmp_path: Path) -> None:
    source = open_scene(FIXTURES / L8)
    t = source.affine
    bounds = (t.c, t.f + t.e * source.height, t.c + t.a * source.width, t.f)
    far = tmp_path / "far.tif"
    with rasterio.open(
        far,
        "w",
        driver="GTiff",
        dtype="float32",
        count=1,
        width=10,
        height=10,
        crs="EPSG:4326",
        transform=rasterio.Affine(0.1, 0, 10.0, 0, -0.1, 50.0),
        nodata=-9999,
    ) as dst:
        dst.write(np.ones((1, 10, 10), np.float32))
    with pytest.raises(KelpsegError, match=r"far.tif: DEM does not overlap the scene"):
        check_dem(far, source.crs, bounds)
    # a geographic DEM over the scene (0.25 deg pixels): 12.4 m in the west, nodata in the east
    near = tmp_path / "near.tif"
    data = np.full((12, 12), 12.4, np.float32)
    data[:, 6:] = -9999
    with rasterio.open(
        near,
        "w",
        driver="GTiff",
        dtype="float32",
        count=1,
        width=12,
        height=12,
        crs="EPSG:4326",
        transform=rasterio.Affine(0.25, 0, -77.0, 0, -0.25, 3.0),
        nodata=-9999,
    ) as dst:
        dst.write(data[None])
    check_dem(near, source.crs, bounds)
    reader = DemReader(near, source.crs, source.affine, source.width, source.height)
    try:
        dem = reader.read(0, 0, 512, 512)
        past = reader.read(500, 500, 20, 20)
    finally:
        reader.close()
    assert dem.dtype == np.int32 and set(np.unique(dem)) <= {12, FILL_VALUE}
    assert dem[:, :50].min() == 12  # the west (lon -76.1 .. -75.5) is covered
    assert np.all(dem[:, -50:] == FILL_VALUE)  # east of lon -75.5: DEM nodata
    assert np.all(past[12:, :] == FILL_VALUE)  # past the scene's last row
