"""GeoTIFF tiles and masks (rasterio).

A satellite tile is 7 bands x 350 x 350 in the order of :data:`kelpseg.bands.BANDS`, integer
on disk with -32768 as nodata. Reading returns float32 with the fill value turned into NaN (or
a chosen number); masks are uint8 0/1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError

from kelpseg.bands import BAND_INDEX, FILL_VALUE, N_BANDS, TILE_SIZE
from kelpseg.errors import TileError, WriteError
from kelpseg.io.atomic import atomic_path

warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


@dataclass(frozen=True)
class TileInfo:
    """Header facts of a GeoTIFF, read without decoding pixels."""

    path: Path
    count: int
    height: int
    width: int
    dtype: str
    crs: Any
    transform: Any


def gdal_reason(exc: BaseException) -> str:
    """GDAL's message on one line, without its dangling "See previous exception for details."."""
    text = " ".join(str(exc).split()).replace(" See previous exception for details.", "")
    text = text.replace("See previous exception for details.", "").strip()
    return text or type(exc).__name__


def _open(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise TileError(f"{path}: file not found")
    if path.is_dir():
        raise TileError(f"{path}: is a directory, expected a GeoTIFF file")
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise TileError(f"{path}: not a readable GeoTIFF ({gdal_reason(exc)})") from None


def tile_info(path: str | Path) -> TileInfo:
    with _open(path) as src:
        return TileInfo(Path(path), src.count, src.height, src.width, src.dtypes[0], src.crs, src.transform)


def _check_shape(path: Path, count: int, height: int, width: int, want_count: int, what: str) -> None:
    if count != want_count or height != TILE_SIZE or width != TILE_SIZE:
        raise TileError(
            f"{path}: expected a {what} of {want_count} band(s) x {TILE_SIZE} x {TILE_SIZE}, "
            f"got {count} x {height} x {width}"
        )


def _read_all(path: Path, src: Any, indexes: list[int] | None = None) -> np.ndarray:
    try:
        return src.read(indexes)
    except RasterioIOError as exc:
        raise TileError(f"{path}: truncated or corrupt GeoTIFF ({gdal_reason(exc)})") from None


def read_raw_tile(path: str | Path) -> np.ndarray:
    """Read a satellite tile exactly as stored: (7, 350, 350) in the file's dtype, fill kept."""
    path = Path(path)
    with _open(path) as src:
        _check_shape(path, src.count, src.height, src.width, N_BANDS, "satellite tile")
        return _read_all(path, src)


def read_tile(
    path: str | Path,
    bands: tuple[str, ...] | list[str] | None = None,
    fill: float = np.nan,
) -> np.ndarray:
    """Read a satellite tile as float32 (C, 350, 350), bands in the order asked for.

    Pixels equal to the competition fill value (-32768) become ``fill`` (NaN by default).
    Integer and float files are both accepted.
    """
    path = Path(path)
    with _open(path) as src:
        _check_shape(path, src.count, src.height, src.width, N_BANDS, "satellite tile")
        indexes = None if bands is None else [BAND_INDEX[b] + 1 for b in bands]
        if bands is not None:
            unknown = [b for b in bands if b not in BAND_INDEX]
            if unknown:
                raise ValueError(f"unknown band(s) {unknown}")
        raw = _read_all(path, src, indexes)
    return raw_to_float(raw, fill)


def raw_to_float(raw: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Raw tile values (any shape, as stored) as float32, the fill value -32768 replaced by ``fill``."""
    out = raw.astype(np.float32, copy=False)
    missing = raw == FILL_VALUE
    if missing.any():
        out = out.copy() if out is raw else out
        out[missing] = fill
    return out


def read_mask(path: str | Path) -> np.ndarray:
    """Read a kelp mask as uint8 (350, 350) with values 0/1."""
    path = Path(path)
    with _open(path) as src:
        _check_shape(path, src.count, src.height, src.width, 1, "mask")
        data = _read_all(path, src, 1)
    values = np.unique(data)
    if not np.isin(values, (0, 1)).all():
        raise TileError(f"{path}: expected mask values 0/1, got {values[:10].tolist()}")
    return data.astype(np.uint8, copy=False)


def _profile(array: np.ndarray, dtype: str, like: str | Path | None, nodata: float | None) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": array.shape[-2],
        "width": array.shape[-1],
        "count": 1 if array.ndim == 2 else array.shape[0],
        "dtype": dtype,
        "compress": "deflate",
        "nodata": nodata,
    }
    if like is not None:
        with _open(like) as src:
            if src.crs is not None:
                profile["crs"] = src.crs
            if src.transform is not None and not src.transform.is_identity:
                profile["transform"] = src.transform
    return profile


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    dtype: str,
    like: str | Path | None = None,
    nodata: float | None = None,
    crs: Any = None,
    transform: Any = None,
    **creation: Any,
) -> Path:
    """Write a 2-D (one band) or 3-D (bands first) array atomically as GeoTIFF.

    ``like`` copies CRS and transform from another file when it has them; explicit ``crs`` /
    ``transform`` win over ``like``; ``creation`` adds GDAL creation options (e.g. ``zlevel=1``).
    The file is read back before it takes its final name (see :func:`kelpseg.io.atomic.atomic_path`).
    """
    path = Path(path)
    profile = {**_profile(array, dtype, like, nodata), **creation}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    data = np.asarray(array[None] if array.ndim == 2 else array).astype(dtype, copy=False)
    with atomic_path(path, verify=lambda tmp: _verify_geotiff(tmp, data)) as tmp:
        try:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(data)
        except RasterioError as exc:
            raise WriteError(f"cannot write {path}: {gdal_reason(exc)}") from None
    return path


def _verify_geotiff(path: Path, data: np.ndarray) -> None:
    """Read a just-written GeoTIFF back: GDAL may report a failed write (full disk) only in its log."""
    with rasterio.open(path) as src:
        back = src.read()
    if back.shape != data.shape or not np.array_equal(back, data, equal_nan=data.dtype.kind == "f"):
        raise ValueError("the file read back differs from the data written")


def write_mask(path: str | Path, mask: np.ndarray, like: str | Path | None = None) -> Path:
    """Write a 0/1 uint8 mask (350 x 350 in the competition) as a one-band GeoTIFF."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    values = np.unique(mask)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"mask values must be 0/1, got {values[:10].tolist()}")
    return write_geotiff(path, mask, "uint8", like=like)


def write_probability(path: str | Path, prob: np.ndarray, like: str | Path | None = None) -> Path:
    """Write a kelp probability map (float32 in [0, 1]) as a one-band GeoTIFF."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"probability map must be 2-D, got shape {prob.shape}")
    return write_geotiff(path, prob, "float32", like=like)
