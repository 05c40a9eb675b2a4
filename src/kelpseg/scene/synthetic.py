"""Synthetic Landsat C2 L2 scenes (band files, QA_PIXEL, MTL.json, a real UTM CRS) with true kelp.

The physics are the tile generator's (:mod:`kelpseg.synthetic`): fractal fields from
:func:`~kelpseg.synthetic.spectral_noise`, its water / land / cloud reflectance spectra, its kelp
reflectance change, ``DN = 7273 + ρ / 2.75e-5`` and its sensor noise. What differs is scale:
a scene is thousands of pixels square, so nothing is computed on the full grid at once.

* The coastline comes from a coarse elevation field (spectral noise plus an east-west ramp: sea
  in the west, as off California) interpolated bilinearly onto each 512-row strip; land is above
  the field's sea level. Shallow water and the kelp zone are bands of the field just below sea
  level, so they follow the coast; kelp beds are where a finer fractal field (periodic, tiled
  seamlessly) is high inside the zone. Canopy density ``d`` adds ``d · Δρ_kelp``; the true mask is
  ``d > 0.35`` (the tile generator's label threshold) on valid pixels.
* Clouds: a coarse field's top ``cloud_fraction`` (QA bit 3, with dilated cloud bit 1 around it),
  blended towards the cloud spectrum. QA_PIXEL also carries clear (bit 6) and water (bit 7).
* The scene footprint is a rotated rectangle (as Landsat's path is inclined): outside it SR is
  0 and QA_PIXEL is 1 (fill).

Files: ``<product id>_SR_B{n}.TIF`` for the five bands the sensor's band map needs,
``_QA_PIXEL.TIF``, ``_MTL.json``, and outside the product ``<product id>_truth_kelp.tif`` and
(optionally) ``<product id>_dem.tif`` (on the scene grid; land elevation, sea 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from scipy import ndimage

from kelpseg.bands import SPECTRAL_BANDS
from kelpseg.errors import KelpsegError
from kelpseg.scene.c2l2 import BAND_NUMBERS, QA_BITS
from kelpseg.synthetic import (
    _BARE,
    _CLOUD,
    _KELP_DELTA,
    _VEGETATION,
    _WATER_DEEP,
    _WATER_SHALLOW,
    REFLECTANCE_SCALE,
    ZERO_DN,
    spectral_noise,
)

STRIP = 512
KELP_THRESHOLD = 0.35
_COARSE = 256
_FINE = 512
_SENSOR_PREFIX = {"TM": "LT05", "ETM+": "LE07", "OLI": "LC08", "OLI-2": "LC09"}
_SPACECRAFT = {"TM": "LANDSAT_5", "ETM+": "LANDSAT_7", "OLI": "LANDSAT_8", "OLI-2": "LANDSAT_9"}


@dataclass(frozen=True)
class SyntheticScene:
    folder: Path
    product_id: str
    truth: Path
    dem: Path | None
    height: int
    width: int
    epsg: int
    kelp_pixels: int


def product_id(sensor: str, path: int, row: int, date: str) -> str:
    acq = date.replace("-", "")
    return f"{_SENSOR_PREFIX[sensor]}_L2SP_{path:03d}{row:03d}_{acq}_{acq}_02_T1"


def _bilinear(field: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(field, [rr, cc], order=1, mode="nearest").astype(np.float32)


def write_synthetic_scene(
    root: str | Path,
    height: int = 2000,
    width: int = 2000,
    seed: int = 0,
    date: str = "2020-07-15",
    sensor: str = "OLI",
    wrs: tuple[int, int] = (42, 36),
    epsg: int = 32611,
    cloud_fraction: float = 0.1,
    kelp_vigour: float = 1.0,
    footprint_angle_deg: float = 8.0,
    with_dem: bool = True,
    noise_sigma: float = 35.0,
) -> SyntheticScene:
    """Write one synthetic C2 L2 scene folder under ``root``; returns where everything went.

    ``kelp_vigour`` scales canopy density (0: no kelp), so a series of dates can grow and shrink.
    The same ``seed`` gives the same coast and beds; ``date`` changes clouds, vigour pattern, noise.
    """
    if sensor not in BAND_NUMBERS:
        raise KelpsegError(f"unknown sensor {sensor!r}; choose from {list(BAND_NUMBERS)}")
    if height < 1 or width < 1:
        raise KelpsegError(f"scene size must be positive, got {height} x {width}")
    pid = product_id(sensor, wrs[0], wrs[1], date)
    folder = Path(root) / pid
    folder.mkdir(parents=True, exist_ok=True)
    place = np.random.default_rng(seed)
    when = np.random.default_rng([seed, int(date.replace("-", ""))])

    coast = spectral_noise(place, _COARSE, [3.2])[0]
    ramp = np.linspace(-2.5, 2.5, _COARSE, dtype=np.float32)[None, :]
    elevation = coast * 0.6 + ramp  # sea (low) in the west
    level = float(np.quantile(elevation, 0.55))
    beds = spectral_noise(place, _FINE, [2.4])[0]
    clouds = spectral_noise(when, _COARSE, [3.4])[0]
    cloud_level = float(np.quantile(clouds, 1.0 - cloud_fraction)) if cloud_fraction > 0 else np.inf
    patch = spectral_noise(when, _FINE, [2.2])[0]
    kelp_delta = _KELP_DELTA.copy()
    kelp_delta[SPECTRAL_BANDS.index("NIR")] = 0.12
    gain = when.uniform(0.95, 1.05, size=len(SPECTRAL_BANDS)).astype(np.float32)

    # the scene grid: 30 m pixels, the scene centred on the zone's central meridian
    transform = rasterio.Affine(30.0, 0.0, 500000.0 - 15.0 * width, 0.0, -30.0, 3_800_000.0 + 15.0 * height)
    crs = rasterio.crs.CRS.from_epsg(epsg)
    numbers = dict(zip(SPECTRAL_BANDS, BAND_NUMBERS[sensor], strict=True))
    profile = {
        "driver": "GTiff",
        "dtype": "uint16",
        "count": 1,
        "width": width,
        "height": height,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "zlevel": 1,
    }
    files = {b: folder / f"{pid}_SR_B{numbers[b]}.TIF" for b in SPECTRAL_BANDS}
    qa_path = folder / f"{pid}_QA_PIXEL.TIF"
    truth_path = Path(root) / f"{pid}_truth_kelp.tif"
    dem_path = Path(root) / f"{pid}_dem.tif" if with_dem else None
    outs = {b: rasterio.open(p, "w", **profile, nodata=0) for b, p in files.items()}
    qa_out = rasterio.open(qa_path, "w", **profile, nodata=1)
    truth_out = rasterio.open(truth_path, "w", **{**profile, "dtype": "uint8"}, nodata=255)
    dem_out = (
        rasterio.open(dem_path, "w", **{**profile, "dtype": "int16"}, nodata=-32768) if dem_path else None
    )
    theta = np.deg2rad(footprint_angle_deg)
    cy, cx = height / 2.0, width / 2.0
    half = 0.5 * min(height, width) / (abs(np.cos(theta)) + abs(np.sin(theta))) * 1.02
    cols = np.arange(width, dtype=np.float32)
    kelp_pixels = 0
    cloudy = 0
    try:
        for r0 in range(0, height, STRIP):
            n = min(STRIP, height - r0)
            rows = np.arange(r0, r0 + n, dtype=np.float32)
            z = _bilinear(
                elevation, rows * (_COARSE - 1) / max(height - 1, 1), cols * (_COARSE - 1) / max(width - 1, 1)
            )
            cz = _bilinear(
                clouds, rows * (_COARSE - 1) / max(height - 1, 1), cols * (_COARSE - 1) / max(width - 1, 1)
            )
            fine = beds[np.ix_(rows.astype(int) % _FINE, cols.astype(int) % _FINE)]
            fine_patch = patch[np.ix_(rows.astype(int) % _FINE, cols.astype(int) % _FINE)]
            depth = level - z  # > 0 at sea
            land = depth <= 0
            shallow = np.exp(-np.clip(depth, 0, None) / 0.08)[None]
            refl = np.where(
                land[None],
                0.6 * _VEGETATION[:, None, None] + 0.4 * _BARE[:, None, None],
                _WATER_DEEP[:, None, None] + shallow * _WATER_SHALLOW[:, None, None],
            ).astype(np.float32)
            zone = (depth > 0.005) & (depth < 0.06)
            density = np.clip((fine - 0.6) / 0.7 + 0.5, 0, 1) * zone * kelp_vigour * (1 + 0.3 * fine_patch)
            density = np.clip(density, 0, 1).astype(np.float32)
            refl += density[None] * kelp_delta[:, None, None]
            alpha = np.clip(0.5 + (cz - cloud_level) / 0.6, 0, 1)
            refl = refl * (1 - alpha[None]) + _CLOUD[:, None, None] * alpha[None]
            dn = ZERO_DN + refl * (gain / REFLECTANCE_SCALE)[:, None, None]
            dn += when.standard_normal(dn.shape, dtype=np.float32) * np.float32(noise_sigma)
            dn = np.clip(np.rint(dn), 1, 65535).astype(np.uint16)

            yy = rows[:, None] - cy
            xx = cols[None, :] - cx
            u = xx * np.cos(theta) + yy * np.sin(theta)
            v = -xx * np.sin(theta) + yy * np.cos(theta)
            inside = (np.abs(u) <= half) & (np.abs(v) <= half)
            cloud = cz > cloud_level
            dilated = ndimage.binary_dilation(cloud, iterations=3) & ~cloud
            qa = np.zeros((n, width), np.uint16)
            qa |= (cloud.astype(np.uint16) << QA_BITS["cloud"]) | (
                dilated.astype(np.uint16) << QA_BITS["dilated_cloud"]
            )
            clear = ~cloud & ~dilated
            qa |= (clear.astype(np.uint16) << QA_BITS["clear"]) | (
                (clear & ~land).astype(np.uint16) << QA_BITS["water"]
            )
            qa[~inside] = 1 << QA_BITS["fill"]
            dn[:, ~inside] = 0
            truth = np.where(inside, density > KELP_THRESHOLD, 255).astype(np.uint8)
            kelp_pixels += int((truth == 1).sum())
            cloudy += int((cloud & inside).sum())
            window = Window(0, r0, width, n)
            for i, b in enumerate(SPECTRAL_BANDS):
                outs[b].write(dn[i], 1, window=window)
            qa_out.write(qa, 1, window=window)
            truth_out.write(truth, 1, window=window)
            if dem_out is not None:
                elev = np.where(land, np.rint(1 + 400 * np.clip(-depth, 0, None)), 0).astype(np.int16)
                dem_out.write(elev, 1, window=window)
    finally:
        for ds in [*outs.values(), qa_out, truth_out, *([dem_out] if dem_out else [])]:
            ds.close()
    mtl = {
        "LANDSAT_METADATA_FILE": {
            "PRODUCT_CONTENTS": {
                "LANDSAT_PRODUCT_ID": pid,
                "PROCESSING_LEVEL": "L2SP",
                "COLLECTION_NUMBER": "02",
                "COLLECTION_CATEGORY": "T1",
                **{f"FILE_NAME_BAND_{numbers[b]}": files[b].name for b in SPECTRAL_BANDS},
                "FILE_NAME_QUALITY_L1_PIXEL": qa_path.name,
                "FILE_NAME_METADATA_ODL": f"{pid}_MTL.json",
            },
            "IMAGE_ATTRIBUTES": {
                "SPACECRAFT_ID": _SPACECRAFT[sensor],
                "WRS_PATH": str(wrs[0]),
                "WRS_ROW": str(wrs[1]),
                "DATE_ACQUIRED": date,
                "SCENE_CENTER_TIME": "18:30:00.0000000Z",
                "CLOUD_COVER": f"{100.0 * cloudy / max(height * width, 1):.2f}",
            },
            "PROJECTION_ATTRIBUTES": {"MAP_PROJECTION": "UTM", "UTM_ZONE": str(epsg % 100)},
        }
    }
    (folder / f"{pid}_MTL.json").write_text(json.dumps(mtl, indent=1))
    return SyntheticScene(folder, pid, truth_path, dem_path, height, width, epsg, kelp_pixels)
