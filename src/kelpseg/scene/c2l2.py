"""Landsat Collection 2 Level-2 scenes (and ready 7-band stacks) as the competition's 7 bands.

A C2 L2 scene is a folder (or ``.tar``) of GeoTIFFs named
``L{C|E|T}0{9|8|7|5}_L2S{P|R}_<path><row>_<acq>_<proc>_02_T{1|2}_<SUFFIX>`` with an MTL file
(``MTL.json`` / ``.txt`` / ``.xml``). :func:`open_scene` accepts such a folder, a ``.tar``, one
of its MTL files, or a 7-band GeoTIFF already in the competition band order, checks every file
it needs, and returns a :class:`SceneSource` (picklable: paths and grid facts only) whose
:meth:`SceneSource.open` reads windows as the competition tiles hold them:

* the five spectral bands mapped to SWIR, NIR, R, G, B (TM / ETM+: SR_B5, B4, B3, B2, B1;
  OLI / OLI-2: SR_B6, B5, B4, B3, B2), surface-reflectance DN passed through (reflectance =
  DN × 2.75e-5 − 0.2), SR fill 0 → −32768;
* QA: 1 where any of the chosen QA_PIXEL bits is set (default cloud, dilated cloud, cloud shadow,
  cirrus), 0 elsewhere, −32768 at QA fill (bit 0), which also blanks the spectral bands;
* DEM: −32768 (nodata) unless a DEM is given (:mod:`kelpseg.scene.dem` fills it per window).

Beside the stack a window carries ``water``: QA_PIXEL bit 7 for C2 L2 scenes, DEM ≤ 0 or DEM
nodata for a stack (what "clear water observed" counts).
"""

from __future__ import annotations

import json
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from kelpseg.bands import BAND_INDEX, FILL_VALUE, N_BANDS, SPECTRAL_BANDS
from kelpseg.errors import KelpsegError
from kelpseg.scene.sensors import BAND_NUMBERS, SENSORS


class SceneError(KelpsegError):
    """A scene's files are missing, inconsistent or not what a C2 L2 product holds."""


# ---- facts -------------------------------------------------------------------------------------
#: QA_PIXEL bit numbers (Landsat Collection 2 Level-2, all sensors; cirrus on 8/9 only).
QA_BITS: dict[str, int] = {
    "fill": 0,
    "dilated_cloud": 1,
    "cirrus": 2,
    "cloud": 3,
    "shadow": 4,
    "snow": 5,
    "clear": 6,
    "water": 7,
}
#: QA_PIXEL bits that make the competition's 0/1 cloud band 1 (the competition did not publish its
#: choice; this is the usual "unusable" set).
DEFAULT_QA_BITS: tuple[str, ...] = ("cloud", "dilated_cloud", "shadow", "cirrus")

QA_SUFFIX = "QA_PIXEL"
MTL_SUFFIXES = ("MTL.json", "MTL.txt", "MTL.xml")
PRODUCT_RE = re.compile(
    r"^(?P<id>L(?P<sensor>[CETOM])0(?P<sat>\d)_(?P<level>L2S[PR])_(?P<path>\d{3})(?P<row>\d{3})_"
    r"(?P<acq>\d{8})_(?P<proc>\d{8})_(?P<coll>\d{2})_(?P<tier>T1|T2|RT|A1))_(?P<suffix>.+)$"
)


def band_map(sensor: str) -> dict[str, str]:
    """Competition band name -> C2 L2 file suffix, e.g. ``{"SWIR": "SR_B6", ...}`` for OLI."""
    if sensor not in BAND_NUMBERS:
        raise SceneError(f"unknown Landsat sensor {sensor!r}; expected one of {list(BAND_NUMBERS)}")
    return {b: f"SR_B{n}" for b, n in zip(SPECTRAL_BANDS, BAND_NUMBERS[sensor], strict=True)}


def qa_bit_mask(bits: Sequence[str | int]) -> int:
    """OR of the QA_PIXEL bits named (``"cloud"``) or numbered (``3``)."""
    value = 0
    for bit in bits:
        if isinstance(bit, str) and not bit.isdigit():
            if bit not in QA_BITS:
                raise KelpsegError(f"unknown QA bit {bit!r}; choose from {list(QA_BITS)} or numbers 0-15")
            number = QA_BITS[bit]
        else:
            number = int(bit)
            if not 0 <= number <= 15:
                raise KelpsegError(f"QA bit {number} outside 0-15")
        value |= 1 << number
    return value


def qa_to_band(qa: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """QA_PIXEL (uint16) -> (competition QA band int32: 0/1, −32768 at fill; fill bool)."""
    qa = qa.astype(np.uint16, copy=False)
    fill = (qa & (1 << QA_BITS["fill"])) != 0
    band = ((qa & bits) != 0).astype(np.int32)
    band[fill] = FILL_VALUE
    return band, fill


# ---- metadata ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneMeta:
    """What the MTL (or the product id) says about a scene."""

    scene_id: str
    spacecraft: str  # "LANDSAT_8", or "" for a plain stack
    sensor: str  # "TM", "ETM+", "OLI", "OLI-2", or "" for a plain stack
    wrs_path: int | None = None
    wrs_row: int | None = None
    date: str | None = None  # YYYY-MM-DD
    time: str | None = None  # HH:MM:SS(.f)Z
    cloud_cover: float | None = None
    processing_level: str | None = None
    category: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # suffix -> file name, from PRODUCT_CONTENTS

    def to_dict(self) -> dict[str, Any]:
        return {
            "scene_id": self.scene_id,
            "spacecraft": self.spacecraft,
            "sensor": self.sensor,
            "wrs_path": self.wrs_path,
            "wrs_row": self.wrs_row,
            "date": self.date,
            "time": self.time,
            "cloud_cover": self.cloud_cover,
            "processing_level": self.processing_level,
            "category": self.category,
        }


def _parse_odl(text: str) -> dict[str, Any]:
    root: dict[str, Any] = {}
    stack = [root]
    for line in text.splitlines():
        line = line.strip()
        if not line or line == "END" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key == "GROUP":
            child: dict[str, Any] = {}
            stack[-1][value] = child
            stack.append(child)
        elif key == "END_GROUP":
            if len(stack) > 1:
                stack.pop()
        else:
            stack[-1][key] = value.strip('"')
    return root


def _parse_xml(text: str) -> dict[str, Any]:
    def walk(node: ET.Element) -> Any:
        children = list(node)
        if not children:
            return (node.text or "").strip()
        return {child.tag: walk(child) for child in children}

    root = ET.fromstring(text)
    return {root.tag: walk(root)}


def parse_mtl(text: str, name: str) -> dict[str, Any]:
    """The ``LANDSAT_METADATA_FILE`` group of an MTL (JSON, ODL text or XML) as nested dicts."""
    try:
        if name.endswith(".json"):
            data = json.loads(text)
        elif name.endswith(".xml"):
            data = _parse_xml(text)
        else:
            data = _parse_odl(text)
        return data["LANDSAT_METADATA_FILE"]
    except (ValueError, KeyError, TypeError, ET.ParseError) as exc:
        raise SceneError(f"{name}: not a Landsat MTL metadata file ({type(exc).__name__}: {exc})") from None


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


def meta_from_mtl(mtl: dict[str, Any], name: str) -> SceneMeta:
    contents = mtl.get("PRODUCT_CONTENTS", {})
    image = mtl.get("IMAGE_ATTRIBUTES", {})
    spacecraft = str(image.get("SPACECRAFT_ID", ""))
    match = re.fullmatch(r"LANDSAT_(\d)", spacecraft)
    if not match or int(match.group(1)) not in SENSORS:
        raise SceneError(f"{name}: SPACECRAFT_ID {spacecraft!r} is not Landsat 4/5/7/8/9")
    files: dict[str, str] = {}
    product = str(contents.get("LANDSAT_PRODUCT_ID", ""))
    for key, value in contents.items():
        band = re.fullmatch(r"FILE_NAME_BAND_(\d+)", key)
        if band:  # the reflective bands by their MTL key, whatever the file is called
            files[f"SR_B{band.group(1)}"] = str(value)
        elif key == "FILE_NAME_QUALITY_L1_PIXEL":
            files[QA_SUFFIX] = str(value)
        elif key.startswith("FILE_NAME_"):
            m = PRODUCT_RE.match(Path(str(value)).stem)
            if m:
                files.setdefault(m.group("suffix"), str(value))
    return SceneMeta(
        scene_id=product or name.rsplit("_MTL", 1)[0],
        spacecraft=spacecraft,
        sensor=SENSORS[int(match.group(1))],
        wrs_path=_int(image.get("WRS_PATH")),
        wrs_row=_int(image.get("WRS_ROW")),
        date=str(image.get("DATE_ACQUIRED")) or None,
        time=str(image.get("SCENE_CENTER_TIME", "")).strip('"') or None,
        cloud_cover=_float(image.get("CLOUD_COVER")),
        processing_level=str(contents.get("PROCESSING_LEVEL", "")) or None,
        category=str(contents.get("COLLECTION_CATEGORY", "")) or None,
        files=files,
    )


def meta_from_product_id(product_id: str) -> SceneMeta:
    """Facts readable from the product id alone (no MTL): sensor, path/row, date."""
    m = PRODUCT_RE.match(product_id + "_X")
    if not m:
        raise SceneError(f"{product_id}: not a Landsat Collection 2 product id")
    sat = int(m.group("sat"))
    if sat not in SENSORS:
        raise SceneError(f"{product_id}: Landsat {sat} is not supported (4, 5, 7, 8, 9)")
    acq = m.group("acq")
    return SceneMeta(
        scene_id=m.group("id"),
        spacecraft=f"LANDSAT_{sat}",
        sensor=SENSORS[sat],
        wrs_path=int(m.group("path")),
        wrs_row=int(m.group("row")),
        date=f"{acq[:4]}-{acq[4:6]}-{acq[6:]}",
        processing_level=m.group("level"),
        category=m.group("tier"),
    )


# ---- finding the files -------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneSource:
    """A scene's files and grid (picklable, so DataLoader workers can open it themselves).

    ``bands`` maps "SWIR", "NIR", "R", "G", "B" and "QA" to GDAL paths (C2 L2), or is empty and
    ``stack`` names a 7-band GeoTIFF.
    """

    origin: Path
    meta: SceneMeta
    width: int
    height: int
    crs_wkt: str
    transform: tuple[float, ...]  # affine a, b, c, d, e, f
    bands: dict[str, str] = field(default_factory=dict)
    stack: str | None = None
    qa_bits: int = qa_bit_mask(DEFAULT_QA_BITS)

    @property
    def affine(self) -> Any:
        return rasterio.Affine(*self.transform)

    @property
    def crs(self) -> Any:
        return rasterio.crs.CRS.from_wkt(self.crs_wkt)

    @property
    def kind(self) -> str:
        return "stack" if self.stack else "c2l2"

    def open(self) -> SceneReader:
        return SceneReader(self)


def _grid_of(path: str, shown: str) -> tuple[int, int, str, tuple[float, ...], int]:
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise SceneError(f"{shown}: GeoTIFF without a CRS (a scene must be georeferenced)")
            if src.transform.is_identity:
                raise SceneError(f"{shown}: GeoTIFF without a georeferencing transform")
            t = src.transform
            return src.width, src.height, src.crs.to_wkt(), (t.a, t.b, t.c, t.d, t.e, t.f), src.count
    except rasterio.errors.RasterioIOError as exc:
        raise SceneError(f"{shown}: unreadable GeoTIFF ({str(exc).splitlines()[0]})") from None


@dataclass
class _Listing:
    """The files of a folder or tar: name -> GDAL path; ``read`` gives a small file's text."""

    where: Path
    paths: dict[str, str]
    tar: Path | None = None

    def read(self, name: str) -> str:
        if self.tar is None:
            return Path(self.paths[name]).read_text()
        with tarfile.open(self.tar) as tf:
            member = next(m for m in tf.getmembers() if Path(m.name).name == name)
            handle = tf.extractfile(member)
            assert handle is not None
            return handle.read().decode()


def _listing(source: Path) -> _Listing:
    if source.is_dir():
        return _Listing(source, {p.name: str(p) for p in sorted(source.iterdir()) if p.is_file()})
    if tarfile.is_tarfile(source):
        with tarfile.open(source) as tf:
            names = [m.name for m in tf.getmembers() if m.isfile()]
        return _Listing(source, {Path(n).name: f"/vsitar/{source.resolve()}/{n}" for n in names}, tar=source)
    raise SceneError(f"{source}: not a scene folder, .tar, MTL file or GeoTIFF")


def _product_files(listing: _Listing) -> dict[str, dict[str, str]]:
    """product id -> {suffix: file name} for the C2 files in a listing."""
    out: dict[str, dict[str, str]] = {}
    for name in listing.paths:
        stem, dot, ext = name.rpartition(".")
        if not dot or ext.lower() not in ("tif", "tiff", "json", "txt", "xml"):
            continue
        m = PRODUCT_RE.match(stem)
        if m:
            suffix = m.group("suffix") if ext.lower().startswith("tif") else f"{m.group('suffix')}.{ext}"
            out.setdefault(m.group("id"), {})[suffix] = name
    return out


def open_scene(source: str | Path, qa_bits: Sequence[str | int] = DEFAULT_QA_BITS) -> SceneSource:
    """A C2 L2 folder, ``.tar`` or MTL file, or a 7-band GeoTIFF -> checked :class:`SceneSource`."""
    source = Path(source)
    bits = qa_bit_mask(qa_bits)
    if not source.exists():
        raise SceneError(f"{source}: scene not found")
    if source.is_file() and source.suffix.lower() in (".tif", ".tiff"):
        return _open_stack(source, bits)
    only: str | None = None
    if source.is_file() and source.name.endswith(MTL_SUFFIXES):
        only = source.name.rsplit("_MTL", 1)[0]
        source_dir = source.parent
    else:
        source_dir = source
    listing = _listing(source_dir)
    products = _product_files(listing)
    if only is not None:
        products = {k: v for k, v in products.items() if k == only}
    if not products:
        raise SceneError(
            f"{source}: no Landsat Collection 2 files (L?0?_L2S?_<pathrow>_<date>_<date>_02_T?_*.TIF)"
        )
    if len(products) > 1:
        raise SceneError(
            f"{source}: holds files of {len(products)} scenes ({', '.join(sorted(products))}); "
            "give one scene per folder"
        )
    ((product_id, files),) = products.items()
    mtl_name = next((files[s] for s in MTL_SUFFIXES if s in files), None)
    if mtl_name is not None:
        meta = meta_from_mtl(parse_mtl(listing.read(mtl_name), mtl_name), mtl_name)
    else:
        meta = meta_from_product_id(product_id)
    wanted = {**band_map(meta.sensor), "QA": QA_SUFFIX}
    bands: dict[str, str] = {}
    for band, suffix in wanted.items():
        name = meta.files.get(suffix) if mtl_name is not None else files.get(suffix)
        if name is None:
            what = f"{mtl_name} names no {suffix} file" if mtl_name else f"no {product_id}_{suffix}.TIF"
            raise SceneError(f"{source_dir}: {what} (the {band} band of Landsat {meta.sensor})")
        if name not in listing.paths:
            raise SceneError(
                f"{source_dir / name}: missing ({mtl_name or 'the scene'} needs it as the {band} band)"
            )
        bands[band] = listing.paths[name]
    grids = {band: _grid_of(path, str(source_dir / Path(path).name)) for band, path in bands.items()}
    first = grids["NIR"]
    for band, grid in grids.items():
        if grid[:4] != first[:4]:
            raise SceneError(
                f"{source_dir / Path(bands[band]).name}: grid {grid[1]}x{grid[0]} differs from "
                f"{Path(bands['NIR']).name}'s {first[1]}x{first[0]} (size, CRS or transform)"
            )
    width, height, wkt, transform, _ = first
    return SceneSource(source, meta, width, height, wkt, transform, bands=bands, qa_bits=bits)


def _open_stack(path: Path, bits: int) -> SceneSource:
    width, height, wkt, transform, count = _grid_of(str(path), str(path))
    if count != N_BANDS:
        raise SceneError(
            f"{path}: expected a {N_BANDS}-band stack in the competition order (SWIR, NIR, R, G, B, QA, "
            f"DEM), got {count} band(s)"
        )
    m = PRODUCT_RE.match(path.stem) or PRODUCT_RE.match(path.stem + "_X")
    try:
        meta = meta_from_product_id(m.group("id")) if m else SceneMeta(path.stem, "", "")
    except SceneError:
        meta = SceneMeta(path.stem, "", "")
    with rasterio.open(path) as src:
        tags = src.tags()
    if tags.get("ACQUISITION_DATE") and meta.date is None:
        meta = SceneMeta(path.stem, "", "", date=str(tags["ACQUISITION_DATE"]))
    return SceneSource(path, meta, width, height, wkt, transform, stack=str(path), qa_bits=bits)


# ---- reading windows ---------------------------------------------------------------------------
@dataclass
class WindowPixels:
    """One window: ``stack`` (7, h, w) int32 as a competition tile, ``water`` (h, w) bool."""

    stack: np.ndarray
    water: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """All five spectral bands present."""
        return np.all(self.stack[: len(SPECTRAL_BANDS)] != FILL_VALUE, axis=0)

    @property
    def cloud(self) -> np.ndarray:
        return self.stack[BAND_INDEX["QA"]] == 1


class SceneReader:
    """Open datasets of a :class:`SceneSource`; :meth:`read` reads any window, past the border as fill."""

    def __init__(self, source: SceneSource) -> None:
        self.source = source
        paths = [source.stack] if source.stack else [source.bands[b] for b in (*SPECTRAL_BANDS, "QA")]
        self._datasets = [rasterio.open(p) for p in paths if p is not None]

    def close(self) -> None:
        for ds in self._datasets:
            ds.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, row: int, col: int, height: int, width: int) -> WindowPixels:
        """Rows ``row:row+height``, columns ``col:col+width`` (may reach past the scene)."""
        stack = np.full((N_BANDS, height, width), FILL_VALUE, np.int32)
        water = np.zeros((height, width), bool)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, self.source.height), min(col + width, self.source.width)
        if r1 <= r0 or c1 <= c0:
            return WindowPixels(stack, water)
        win = Window(c0, r0, c1 - c0, r1 - r0)
        inner = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
        if self.source.stack:
            data = self._datasets[0].read(window=win).astype(np.int32)
            stack[(slice(None), *inner)] = data
            dem = data[BAND_INDEX["DEM"]]
            water[inner] = (dem <= 0) | (dem == FILL_VALUE)
            return WindowPixels(stack, water)
        n = len(SPECTRAL_BANDS)
        for i, ds in enumerate(self._datasets[:n]):
            dn = ds.read(1, window=win).astype(np.int32)
            dn[dn == 0] = FILL_VALUE
            stack[(i, *inner)] = dn
        qa = self._datasets[n].read(1, window=win)
        band, fill = qa_to_band(qa, self.source.qa_bits)
        stack[(BAND_INDEX["QA"], *inner)] = band
        if fill.any():
            block = stack[(slice(0, n), *inner)]
            block[:, fill] = FILL_VALUE
        water[inner] = ((qa.astype(np.uint16) >> QA_BITS["water"]) & 1).astype(bool) & ~fill
        return WindowPixels(stack, water)
