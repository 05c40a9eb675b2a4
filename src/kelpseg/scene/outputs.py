"""Scene outputs: probability and mask COGs, kelp polygons (GeoPackage), summary JSON + CSV row.

Everything is first written into a staging folder beside the outputs and renamed into place at
the end, so a failed run leaves earlier outputs intact and no half-written file:

* ``<scene>_probability.tif``: uint8 percent 0–100, nodata 255 (fill, outside the AOI);
* ``<scene>_kelp.tif``: 0/1 kelp mask, nodata 255, with a colour table (dark water, bright
  kelp, transparent nodata);
  both Cloud-Optimised GeoTIFFs (deflate, 512-px internal tiles, overviews), in the scene's CRS
  and on its grid (or the AOI's part of it), every option recorded in the file tags;
* ``<scene>_kelp.gpkg``: layer ``kelp``, one polygon per kelp bed (8-connected pixels), beds
  smaller than the minimum mapping unit dropped; fields ``area_m2``, ``area_ha``,
  ``perimeter_m`` (geodesic, on the WGS84 ellipsoid), ``n_pixels``, ``mean_probability``,
  ``scene_id``, ``sensor``, ``acquired`` (date and time);
* ``<scene>_summary.json`` and ``<scene>_summary.csv`` (one row).

Areas. ``kelp_ha_pixels`` counts kelp pixels × pixel area (|a·e| of the transform in a projected
CRS: 900 m² for Landsat; in a geographic CRS each row's pixels get their geodesic area, never
degree²). ``kelp_ha_polygons`` is the geodesic area of the (sieved) polygons. A projected CRS's
nominal pixel area is not the true ground area (UTM's scale factor shifts it by up to ~0.2 %
inside a zone), which is why both are given.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.shutil
from rasterio.windows import Window

from kelpseg.errors import KelpsegError, WriteError
from kelpseg.evaluate.evaluate import binarize
from kelpseg.io.atomic import write_json, write_text
from kelpseg.io.native_stderr import held_native_stderr
from kelpseg.scene.stitch import Strip

NODATA = 255
PROB_SCALE = 100
MASK_COLORS = {0: (18, 40, 72, 255), 1: (60, 230, 90, 255), NODATA: (0, 0, 0, 0)}
BLOCK = 512


def output_paths(out_dir: Path, scene_id: str) -> dict[str, Path]:
    return {
        "probability": out_dir / f"{scene_id}_probability.tif",
        "mask": out_dir / f"{scene_id}_kelp.tif",
        "polygons": out_dir / f"{scene_id}_kelp.gpkg",
        "scene_summary": out_dir / f"{scene_id}_summary.json",
        "scene_summary_row": out_dir / f"{scene_id}_summary.csv",
    }


# ---- areas -------------------------------------------------------------------------------------
def _geod() -> Any:
    from pyproj import Geod

    return Geod(ellps="WGS84")


def row_pixel_areas(transform: Any, crs: Any, row0: int, n: int) -> np.ndarray:
    """Area in m² of one pixel in each of rows ``row0 … row0 + n − 1``.

    Projected CRS: the nominal |a·e| (in metres², scaled by the CRS's linear unit). Geographic:
    the geodesic area of the pixel at that row's latitude.
    """
    if crs.is_projected:
        unit = float(crs.linear_units_factor[1]) if crs.linear_units_factor else 1.0
        return np.full(n, abs(transform.a * transform.e) * unit * unit, np.float64)
    geod = _geod()
    out = np.empty(n, np.float64)
    for i in range(n):
        x0, y0 = transform * (0, row0 + i)
        x1, y1 = transform * (1, row0 + i + 1)
        area, _ = geod.polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])
        out[i] = abs(area)
    return out


# ---- area counts -------------------------------------------------------------------------------
COUNT_KEYS = ("region", "valid", "fill", "cloud", "clear", "clear_water", "kelp")


@dataclass
class AreaCounts:
    """Pixel counts and areas (m²) of one AOI polygon (or the whole region)."""

    pixels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    m2: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0.0))

    def add(self, name: str, mask: np.ndarray, row_areas: np.ndarray) -> None:
        per_row = mask.sum(axis=1)
        self.pixels[name] += int(per_row.sum())
        self.m2[name] += float((per_row * row_areas).sum())

    def hectares(self) -> dict[str, float]:
        return {f"{k}_ha": round(v / 1e4, 4) for k, v in self.m2.items()}


# ---- write failures ----------------------------------------------------------------------------
#: Free space below which a failed GDAL write is taken for a full disk.
_FULL_BYTES = 1 << 20
#: The loggers rasterio reports GDAL's errors through.
_GDAL_LOGGERS = ("rasterio._env", "rasterio._err")


@contextlib.contextmanager
def gdal_errors() -> Iterator[list[str]]:
    """Collect GDAL's error messages (warnings pass) instead of letting them reach stderr.

    On a full disk libtiff reports every failed block write, and the failure itself surfaces
    later (a truncated file read back): the messages feed :func:`write_failure`'s one line.
    """
    messages: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            messages.append(record.getMessage())
            return False
        return True

    loggers = [logging.getLogger(name) for name in _GDAL_LOGGERS]
    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield messages
    finally:
        for logger in loggers:
            logger.removeFilter(keep)


def write_failure(exc: BaseException, target: Path, gdal_messages: Sequence[str]) -> WriteError | None:
    """A one-line :class:`WriteError` naming ``target`` for a failed scene write; None if not one.

    Bad inputs (:class:`KelpsegError`) and bugs are not write failures and are left as they are.
    """
    import rasterio.errors
    from rasterio._err import CPLE_BaseError  # GDAL's errors (not RasterioError subclasses)

    if isinstance(exc, KelpsegError) and not isinstance(exc, WriteError):
        return None
    try:
        free = shutil.disk_usage(target.parent).free
        space = f"; {free / 2**20:.1f} MiB free on its file system"
    except OSError:
        free, space = None, ""
    gdal = isinstance(exc, WriteError | OSError | rasterio.errors.RasterioError | CPLE_BaseError)
    texts = [str(exc), *gdal_messages]
    # libtiff reports ENOSPC on stderr only; GDAL then fails reading the truncated file back
    full = (
        (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
        or any("no space left" in t.lower() for t in texts)
        or (gdal and free is not None and free < _FULL_BYTES)
    )
    if full:
        return WriteError(f"cannot write {target}: no space left on device{space}")
    if gdal or gdal_messages:
        reason = " ".join((gdal_messages[0] if gdal_messages else str(exc) or type(exc).__name__).split())
        return WriteError(f"cannot write {target}: the write did not complete ({reason}){space}")
    return None


# ---- the writer --------------------------------------------------------------------------------
class SceneWriter:
    """Receives finished strips (:class:`Strip`), writes rasters and counts areas as they come."""

    def __init__(
        self,
        staging: Path,
        scene_id: str,
        crs: Any,
        transform: Any,
        width: int,
        height: int,
        threshold: float,
        aoi: Sequence[Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.staging, self.scene_id = staging, scene_id
        self.crs, self.transform = crs, transform
        self.width, self.height = width, height
        self.threshold = float(threshold)
        self.aoi = list(aoi) if aoi else []
        self.tags = dict(tags or {})
        profile = {
            "driver": "GTiff",
            "dtype": "uint8",
            "count": 1,
            "width": width,
            "height": height,
            "crs": crs,
            "transform": transform,
            "nodata": NODATA,
            "tiled": True,
            "blockxsize": BLOCK,
            "blockysize": BLOCK,
            "compress": "deflate",
            "zlevel": 1,
            "BIGTIFF": "IF_SAFER",
        }
        #: Full-disk lines libtiff printed during the writes (see :mod:`kelpseg.io.native_stderr`).
        self.held: list[str] = []
        with held_native_stderr(self.held):
            self._prob = rasterio.open(staging / "probability.raw.tif", "w", **profile)
            self._mask = rasterio.open(staging / "mask.raw.tif", "w", **profile)
            self._kelp = rasterio.open(staging / "kelp01.raw.tif", "w", **{**profile, "nodata": None})
        # One row of blocks per raster, written when full: every GTiff write covers whole tiles,
        # so no tile is compressed, read back and rewritten as strips straddle tile borders.
        self._rows = np.zeros((3, min(BLOCK, height), width), np.uint8)
        self._rows_start = 0  # raster row of self._rows[:, 0]
        self._rows_filled = 0
        self.total = AreaCounts()
        self.per_aoi = [AreaCounts() for _ in self.aoi]
        #: The output being written now (named by a write failure).
        self.writing = "probability"
        self._cog_writing = "probability"

    def _aoi_ids(self, strip: Strip) -> np.ndarray | None:
        """(n, width) int32: 1-based index of the first AOI polygon holding each pixel, 0 outside."""
        if not self.aoi:
            return None
        n = strip.prob.shape[0]
        window_transform = self.transform * rasterio.Affine.translation(0, strip.row)
        shapes = [(g, i + 1) for i, g in reversed(list(enumerate(self.aoi)))]
        return rasterio.features.rasterize(
            shapes, out_shape=(n, self.width), transform=window_transform, fill=0, dtype="int32"
        )

    def write(self, strip: Strip) -> None:
        n = strip.prob.shape[0]
        ids = self._aoi_ids(strip)
        inside = np.ones((n, self.width), bool) if ids is None else ids > 0
        valid = strip.valid & inside & np.isfinite(strip.prob)
        prob = np.nan_to_num(strip.prob, nan=0.0)
        kelp = binarize(prob, self.threshold) & valid
        pct = np.where(valid, np.rint(np.clip(prob, 0, 1) * PROB_SCALE), NODATA).astype(np.uint8)
        mask = np.where(valid, kelp, NODATA).astype(np.uint8)
        self._buffer(strip.row, np.stack([pct, mask, kelp.astype(np.uint8)]))

        areas = row_pixel_areas(self.transform, self.crs, strip.row, n)
        cloud = valid & strip.cloud
        clear = valid & ~strip.cloud
        layers = {
            "valid": valid,
            "fill": inside & ~valid,
            "cloud": cloud,
            "clear": clear,
            "clear_water": clear & strip.water,
            "kelp": kelp,
        }
        targets = [(self.total, inside)]
        if ids is not None:
            targets += [(counts, ids == i + 1) for i, counts in enumerate(self.per_aoi)]
        for counts, where in targets:
            counts.add("region", where, areas)
            for name, layer in layers.items():
                counts.add(name, layer & where, areas)

    def _buffer(self, row: int, layers: np.ndarray) -> None:
        """Copy (3, n, width) rows starting at raster ``row`` into the block-row buffer, writing full ones."""
        if row != self._rows_start + self._rows_filled:
            raise ValueError(f"strip at row {row}: expected row {self._rows_start + self._rows_filled}")
        done = 0
        while done < layers.shape[1]:
            take = min(layers.shape[1] - done, self._rows.shape[1] - self._rows_filled)
            self._rows[:, self._rows_filled : self._rows_filled + take] = layers[:, done : done + take]
            self._rows_filled += take
            done += take
            if (
                self._rows_filled == self._rows.shape[1]
                or self._rows_start + self._rows_filled == self.height
            ):
                self._write_rows()

    def _write_rows(self) -> None:
        n = self._rows_filled
        if n:
            window = Window(0, self._rows_start, self.width, n)
            with held_native_stderr(self.held):
                for ds, data in zip((self._prob, self._mask, self._kelp), self._rows, strict=True):
                    ds.write(data[:n], 1, window=window)
        self._rows_start += n
        self._rows_filled = 0

    def close(self) -> None:
        with held_native_stderr(self.held):
            for ds in (self._prob, self._mask, self._kelp):
                if not ds.closed:
                    ds.close()

    # ---- finishing --------------------------------------------------------------------------
    def finish(self, meta: dict[str, Any], min_mapping_unit: int) -> dict[str, Any]:
        """Close the rasters, write COGs and polygons into the staging folder; returns polygon stats."""
        if self._rows_start + self._rows_filled != self.height:
            raise ValueError(
                f"{self.scene_id}: {self._rows_start + self._rows_filled} of {self.height} rows written"
            )
        self._write_rows()
        self.close()
        with held_native_stderr(self.held):
            return self._finish(meta, min_mapping_unit)

    def _finish(self, meta: dict[str, Any], min_mapping_unit: int) -> dict[str, Any]:
        paths = output_paths(self.staging, self.scene_id)
        tags = {**self.tags, "threshold": str(self.threshold), "scene_id": self.scene_id}
        # The two COGs are written by a thread while the polygons are made here: GDAL works
        # without the GIL, and the polygons read the staged probabilities (the same values).
        with ThreadPoolExecutor(max_workers=1) as pool:
            cogs = pool.submit(self._write_cogs, paths, tags)
            self.writing = "polygons"
            stats = write_polygons(
                self.staging / "kelp01.raw.tif",
                self.staging / "probability.raw.tif",
                paths["polygons"],
                self.crs,
                min_mapping_unit,
                meta,
            )
            try:
                cogs.result()
            except BaseException:
                self.writing = self._cog_writing
                raise
        for name in ("probability.raw.tif", "mask.raw.tif", "kelp01.raw.tif"):
            (self.staging / name).unlink(missing_ok=True)
        self.writing = "scene_summary"
        return stats

    def _write_cogs(self, paths: dict[str, Path], tags: dict[str, str]) -> None:
        self._cog_writing = "probability"
        _to_cog(
            self.staging / "probability.raw.tif",
            paths["probability"],
            tags,
            "AVERAGE",
            description="kelp probability (percent)",
        )
        self._cog_writing = "mask"
        _to_cog(
            self.staging / "mask.raw.tif",
            paths["mask"],
            tags,
            "NEAREST",
            colors=MASK_COLORS,
            description="kelp mask (1 kelp, 0 not kelp)",
        )


def _to_cog(
    src_path: Path,
    dst: Path,
    tags: dict[str, str],
    resampling: str,
    colors: dict[int, tuple[int, int, int, int]] | None = None,
    description: str = "",
) -> None:
    with rasterio.open(src_path, "r+") as ds:
        ds.update_tags(**tags)
        if description:
            ds.set_band_description(1, description)
        if colors:
            ds.write_colormap(1, colors)
    rasterio.shutil.copy(
        src_path,
        dst,
        driver="COG",
        COMPRESS="DEFLATE",
        BLOCKSIZE=BLOCK,
        OVERVIEWS="AUTO",
        OVERVIEW_RESAMPLING=resampling,
        RESAMPLING=resampling,
        BIGTIFF="IF_SAFER",
    )


# ---- polygons ----------------------------------------------------------------------------------
POLYGON_FIELDS = (
    "area_m2",
    "area_ha",
    "perimeter_m",
    "n_pixels",
    "mean_probability",
    "scene_id",
    "sensor",
    "acquired",
)


def _to_lonlat(crs: Any) -> Any:
    from pyproj import CRS, Transformer

    return Transformer.from_crs(CRS.from_wkt(crs.to_wkt()), CRS.from_epsg(4326), always_xy=True)


def geodesic_area_perimeter(geom: Any, transformer: Any) -> tuple[float, float]:
    """(area m², perimeter m) of a shapely polygon in the scene CRS, on the WGS84 ellipsoid."""
    (area,), (perimeter,) = geodesic_areas_perimeters([geom], transformer)
    return float(area), float(perimeter)


def geodesic_areas_perimeters(geoms: Sequence[Any], transformer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(areas m², perimeters m) of shapely polygons in the scene CRS, on the WGS84 ellipsoid.

    All coordinates go through the transformer in one call; the ellipsoid sums are per polygon.
    """
    import shapely

    if not len(geoms):
        return np.zeros(0), np.zeros(0)
    lonlat = shapely.transform(
        np.asarray(geoms, dtype=object),
        lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])),
    )
    geod = _geod()
    measured = np.array([geod.geometry_area_perimeter(g) for g in lonlat], np.float64).reshape(-1, 2)
    return np.abs(measured[:, 0]), measured[:, 1]


def write_polygons(
    kelp_path: Path,
    prob_path: Path,
    target: Path,
    crs: Any,
    min_mapping_unit: int,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Polygonise the 0/1 kelp raster (streamed by GDAL), sieve, measure, write a GeoPackage."""
    import pyogrio.raw
    import shapely
    from shapely.geometry import shape

    geoms = []
    n_pixels: list[int] = []
    shapes_geojson: list[dict[str, Any]] = []  # the same polygons, as rasterio burns them fastest
    dropped = 0
    acquired = " ".join(str(meta.get(k) or "") for k in ("date", "time")).strip()
    with rasterio.open(kelp_path) as kelp, rasterio.open(prob_path) as prob:
        pixel = abs(kelp.transform.a * kelp.transform.e)
        band = rasterio.band(kelp, 1)
        for geojson, _ in rasterio.features.shapes(band, mask=band, connectivity=8, transform=kelp.transform):
            geom = shape(geojson)
            count = round(geom.area / pixel)
            if count < min_mapping_unit:
                dropped += 1
                continue
            geoms.append(geom)
            n_pixels.append(count)
            shapes_geojson.append(geojson)
        means = mean_probabilities(prob, geoms, burn=shapes_geojson)
    areas, perimeters = geodesic_areas_perimeters(geoms, _to_lonlat(crs))
    n = len(geoms)
    columns = {
        "area_m2": areas,
        "area_ha": areas / 1e4,
        "perimeter_m": perimeters,
        "n_pixels": np.array(n_pixels, np.int64),
        "mean_probability": np.asarray(means, np.float64),
        "scene_id": np.full(n, str(meta.get("scene_id", "")), dtype=object),
        "sensor": np.full(n, str(meta.get("sensor", "")), dtype=object),
        "acquired": np.full(n, acquired, dtype=object),
    }
    fields = list(POLYGON_FIELDS)
    data = [columns[f] for f in fields]
    wkb = np.array(shapely.to_wkb(geoms), dtype=object) if geoms else np.array([], dtype=object)
    pyogrio.raw.write(
        str(target),
        geometry=wkb,
        field_data=data,
        fields=fields,
        layer="kelp",
        driver="GPKG",
        geometry_type="Polygon",
        crs=crs.to_wkt(),
    )
    return {
        "n_polygons": n,
        "n_dropped_below_mmu": dropped,
        "kelp_m2_polygons": float(areas.sum()),
    }


#: Rows of the probability raster read (and polygons burnt) at a time by ``mean_probabilities``.
MEAN_STRIP_ROWS = 512


def mean_probabilities(
    prob: Any, geoms: Sequence[Any], strip_rows: int = MEAN_STRIP_ROWS, burn: Sequence[Any] | None = None
) -> np.ndarray:
    """Mean probability (0–1) of the ``prob`` raster's pixels inside each polygon (NaN if none).

    One pass over the raster in strips of ``strip_rows`` full rows: the polygons that reach a strip
    are burnt into a label strip (pixel centres inside, as ``geometry_mask``) and the pixel values
    summed per label, instead of one raster read and one rasterisation per polygon. The polygons
    of one scene are disjoint, so each pixel has at most one label; memory does not grow with the
    scene's height. ``burn``: the same polygons as GeoJSON mappings (no conversion per strip).
    """
    import shapely

    n = len(geoms)
    if n == 0:
        return np.zeros(0)
    shapes = geoms if burn is None else burn
    sums = np.zeros(n + 1)
    counts = np.zeros(n + 1, np.int64)
    minx, miny, maxx, maxy = shapely.bounds(np.asarray(geoms, dtype=object)).T
    inverse = ~prob.transform
    corner_rows = np.stack([np.asarray(inverse @ (x, y))[1] for x in (minx, maxx) for y in (miny, maxy)])
    row_lo, row_hi = np.floor(corner_rows.min(axis=0)), np.ceil(corner_rows.max(axis=0))
    for top in range(0, prob.height, strip_rows):
        height = min(strip_rows, prob.height - top)
        hits = np.flatnonzero((row_lo < top + height) & (row_hi > top))
        if hits.size == 0:
            continue
        window = Window(0, top, prob.width, height)
        labels = rasterio.features.rasterize(
            [(shapes[i], int(i) + 1) for i in hits],
            out_shape=(height, prob.width),
            transform=prob.window_transform(window),
            fill=0,
            dtype="int32",
        )
        data = prob.read(1, window=window)
        ok = (labels > 0) & (data != NODATA)
        sums += np.bincount(labels[ok], weights=data[ok], minlength=n + 1)
        counts += np.bincount(labels[ok], minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[1:] > 0, sums[1:] / np.maximum(counts[1:], 1) / PROB_SCALE, np.nan)


# ---- summary -----------------------------------------------------------------------------------
#: The scene's own facts (from its MTL) that open every summary row.
SCENE_FACTS = ("scene_id", "spacecraft", "sensor", "wrs_path", "wrs_row", "date", "time", "cloud_cover")
SUMMARY_COLUMNS = (
    *SCENE_FACTS,
    "aoi",
    "kelp_ha",
    "kelp_ha_polygons",
    "n_polygons",
    "observed_clear_ha",
    "clear_water_ha",
    "cloud_masked_ha",
    "fill_ha",
    "region_ha",
    "unobserved_fraction",
    "threshold",
    "runs",
)


def summary_row(meta: dict[str, Any], aoi: str, counts: AreaCounts, extra: dict[str, Any]) -> dict[str, Any]:
    """One CSV row of a scene (or of one AOI polygon of it)."""
    ha = counts.hectares()
    region = ha["region_ha"]
    unobserved = (ha["cloud_ha"] + ha["fill_ha"]) / region if region > 0 else float("nan")
    return {
        **{k: meta.get(k) for k in SCENE_FACTS},
        "aoi": aoi,
        "kelp_ha": ha["kelp_ha"],
        "kelp_ha_polygons": extra.get("kelp_ha_polygons"),
        "n_polygons": extra.get("n_polygons"),
        "observed_clear_ha": ha["clear_ha"],
        "clear_water_ha": ha["clear_water_ha"],
        "cloud_masked_ha": ha["cloud_ha"],
        "fill_ha": ha["fill_ha"],
        "region_ha": region,
        "unobserved_fraction": round(unobserved, 6),
        "threshold": extra.get("threshold"),
        "runs": extra.get("runs"),
    }


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_summary(staging: Path, scene_id: str, summary: dict[str, Any], row: dict[str, Any]) -> None:
    paths = output_paths(staging, scene_id)
    write_json(paths["scene_summary"], summary)
    write_text(paths["scene_summary_row"], csv_text([row]))


def publish(staging: Path, out_dir: Path, scene_id: str) -> dict[str, Path]:
    """Rename every staged output into ``out_dir`` (same file system: each rename is atomic)."""
    staged = output_paths(staging, scene_id)
    final = output_paths(out_dir, scene_id)
    missing = [str(p) for p in staged.values() if not p.exists()]
    if missing:
        raise KelpsegError(f"{staging}: outputs missing before publishing: {missing}")
    for key, path in staged.items():
        os.replace(path, final[key])
    shutil.rmtree(staging, ignore_errors=True)
    return final
