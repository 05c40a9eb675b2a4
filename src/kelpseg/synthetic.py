"""A synthetic Kelp Wanted dataset, written in the exact competition layout.

The real imagery is not available offline, so the demo, the tests and the benchmarks run on
tiles made here. They are built to exercise every later stage in a meaningful way:

* **Areas of interest (AOIs).** Tiles come in groups of 2-10 dates of one place (about one AOI
  per 5-6 tiles, some singletons). Each AOI has one fractal elevation model (spectral synthesis:
  white noise filtered by ``f^(-beta/2)`` so that the power spectrum falls as ``1/f^beta``, plus a
  gentle ramp so a coastline usually crosses the tile). Land is ``DEM > 0`` m, sea ``DEM = 0``.
  Each date is a 350 x 350 crop of the AOI canvas shifted by 0-6 px, so DEM and coastline repeat
  across dates exactly as near-duplicate tiles do in the competition. Some AOIs are almost all
  water, a few mostly land. The DEM is -32768 (nodata) beyond 15-40 px from land, as real
  DEM coverage ends a few hundred metres offshore.
* **Reflectance.** Bands are Landsat Collection-2 level-2 digital numbers,
  ``DN = 7273 + rho / 2.75e-5`` (``rho`` = surface reflectance, 7273 = zero reflectance), so
  water sits at NIR ~7,400-8,000 and R/G/B ~7,600-9,500 with depth and turbidity variation;
  vegetated land at NIR ~12,000-20,000 with red well below NIR, bare land and beaches brighter
  in the visible; SWIR is near zero reflectance over water.
* **Kelp canopy.** Irregular beds (thresholded smooth noise) in shallow water 1-12 px from
  land, at fixed places within an AOI; each date scales the bed vigour and adds patchiness, so
  the extent varies by date. A canopy density ``d`` in [0, 1] adds ``d * delta`` to the
  reflectance, with NIR raised by 0.08-0.16 reflectance (~2,900-5,800 DN) at full density and
  red / blue slightly lowered (the vegetation signature). The label is ``d > kelp_threshold``.
  About half of the training tiles hold kelp (kelp-free AOIs and kelp-free dates).
* **Clouds** are bright in all bands (~20,000-28,000 DN) with soft edges; ``QA = 1`` where the
  cloud opacity reaches 0.5, 0 elsewhere; their shadows darken the surface a few px away.
  Label policy: a labeller sees the image, so kelp under opaque cloud (``QA = 1``) is *not*
  labelled; kelp under thin haze or shadow is.
* **Landsat-7 SLC-off gaps** on ~15% of tiles: diagonal wedge-shaped stripes (width growing
  along the stripe) set to -32768 in the five spectral bands.
* **Acquisition effects.** Per-date gain/offset (illumination, haze stronger in blue) and
  gaussian sensor noise of a few tens of DN.
* **Label noise (training tiles only).** ~10% of masks are shifted 1-2 px against the image;
  ~1.5% are mislabelled with over 40% of the tile marked kelp (the split stage drops those).
  Test truth is the clean label (``truth/test/masks``): evaluation measures the model, not the
  label noise.

Everything is deterministic in the seed: the plan (ids, AOIs, flags) is drawn in the main
process and every AOI and tile gets its own ``numpy.random.SeedSequence`` child, so any number
of worker processes writes byte-identical files (GeoTIFFs carry no timestamps).

``truth/aoi_membership.csv`` records, per tile: ``tile_id, split, aoi, shift_x, shift_y`` (the
crop offset inside the AOI canvas: pixel ``(y, x)`` of the tile is canvas pixel
``(y + shift_y, x + shift_x)``), then ``date, label_dx, label_dy, mislabelled, cloud_fraction,
stripes, kelp_pixels`` (the label shift applied, the flags, and the kelp pixels of the written
label).
"""

from __future__ import annotations

import hashlib
import shutil
import string
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from kelpseg.bands import BAND_INDEX, FILL_VALUE, SPECTRAL_BANDS, TILE_SIZE
from kelpseg.errors import KelpsegError
from kelpseg.io.atomic import INCOMPLETE_MARKER, atomic_path, save_figure, stage_outputs
from kelpseg.io.metadata import KELP, SATELLITE, load_metadata, write_metadata
from kelpseg.io.tiles import read_mask, read_tile, write_geotiff
from kelpseg.layout import DataLayout, image_name, mask_name, tile_id_from_path
from kelpseg.parallel import abandon_pool, process_pool

#: Landsat C2 L2 scale: DN = ZERO_DN + reflectance / REFLECTANCE_SCALE.
ZERO_DN = 7273.0
REFLECTANCE_SCALE = 2.75e-5
#: Default largest crop offset of a date inside its AOI canvas (each axis, pixels).
MAX_SHIFT = 6
#: Largest crop offset the generator accepts (a third of a tile).
MAX_CROP_OFFSET = TILE_SIZE // 3
CANVAS = TILE_SIZE + MAX_SHIFT
#: The DEM is synthesised on a larger field so that distances to land see past the canvas edge.
_DEM_FIELD = 448
_DEM_MARGIN = (_DEM_FIELD - CANVAS) // 2
#: Size of the FFT used for the other noise fields (a fast size >= CANVAS).
_NOISE_FIELD = 360
#: Largest misregistration (px, each axis) of the DEM against the spectral bands.
_DEM_MISREGISTRATION = 2

# Endmember reflectances in band order SWIR, NIR, R, G, B.
_WATER_DEEP = np.array([0.000, 0.006, 0.013, 0.033, 0.044], np.float32)
_WATER_SHALLOW = np.array([0.000, 0.004, 0.010, 0.022, 0.012], np.float32)
_WATER_TURBID = np.array([0.002, 0.010, 0.020, 0.018, 0.010], np.float32)
_VEGETATION = np.array([0.130, 0.250, 0.048, 0.066, 0.038], np.float32)
_BARE = np.array([0.230, 0.210, 0.120, 0.110, 0.098], np.float32)
_SAND = np.array([0.300, 0.300, 0.240, 0.220, 0.190], np.float32)
_CLOUD = np.array([0.360, 0.500, 0.520, 0.530, 0.550], np.float32)
#: Full-density kelp canopy minus water, except NIR which is drawn per AOI.
_KELP_DELTA = np.array([0.012, 0.0, -0.006, -0.004, -0.010], np.float32)
#: Haze offset (DN) per band at full haze: strongest in blue.
_HAZE_DN = np.array([20.0, 60.0, 150.0, 230.0, 320.0], np.float32)
_N_SPECTRAL = len(SPECTRAL_BANDS)
#: Smallest DN range of the preview stretch.
_MIN_STRETCH_DN = 3500.0


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; the defaults give the realistic mix described in the module doc."""

    singleton_fraction: float = 0.10
    dates_per_aoi: tuple[int, int] = (2, 10)
    #: Probability of an AOI that is almost all water / mostly land (the rest are mixed coast).
    p_water_aoi: float = 0.15
    p_land_aoi: float = 0.10
    #: Fraction of all tiles that belong to AOIs with kelp beds.
    kelp_aoi_tile_fraction: float = 0.58
    #: Probability that a date of a kelp AOI shows no canopy.
    p_kelp_free_date: float = 0.15
    kelp_threshold: float = 0.35
    kelp_max_dist_px: tuple[float, float] = (4.0, 10.0)
    dem_coverage_px: tuple[float, float] = (15.0, 40.0)
    p_cloud: float = 0.35
    cloud_cover: tuple[float, float] = (0.03, 0.55)
    p_stripes: float = 0.15
    p_misaligned: float = 0.10
    mislabelled_fraction: float = 0.015
    noise_sigma: float = 35.0
    #: Largest crop offset (px, each axis) of a date inside its AOI canvas, up to a third of a tile.
    max_crop_offset: int = MAX_SHIFT
    #: Probability that an AOI of 3 or more dates is a *chain*: its dates are crops along a strip,
    #: each overlapping the next by two thirds of a tile or more, the first and last possibly not at all.
    p_chain: float = 0.0
    #: Probability per date that the DEM is misregistered 1-2 px against the spectral bands.
    p_dem_misregistration: float = 0.0
    #: Probability of an open-water AOI: no land in the canvas, so the DEM is sea level (0) near
    #: land beyond the canvas and nodata elsewhere, i.e. no terrain to recognise.
    p_open_water: float = 0.0

    def __post_init__(self) -> None:
        probs = {
            "singleton_fraction": self.singleton_fraction,
            "p_water_aoi": self.p_water_aoi,
            "p_land_aoi": self.p_land_aoi,
            "kelp_aoi_tile_fraction": self.kelp_aoi_tile_fraction,
            "p_kelp_free_date": self.p_kelp_free_date,
            "p_cloud": self.p_cloud,
            "p_stripes": self.p_stripes,
            "p_misaligned": self.p_misaligned,
            "mislabelled_fraction": self.mislabelled_fraction,
            "p_chain": self.p_chain,
            "p_dem_misregistration": self.p_dem_misregistration,
            "p_open_water": self.p_open_water,
        }
        bad = [name for name, p in probs.items() if not 0.0 <= p <= 1.0]
        if bad or self.p_water_aoi + self.p_land_aoi > 1.0:
            raise KelpsegError(f"SynthConfig: probabilities must lie in [0, 1], check {bad or 'p_*_aoi'}")
        if not 0 <= self.max_crop_offset <= MAX_CROP_OFFSET:
            raise KelpsegError(
                f"SynthConfig: max_crop_offset must be in [0, {MAX_CROP_OFFSET}], got {self.max_crop_offset}"
            )
        lo, hi = self.dates_per_aoi
        if not 2 <= lo <= hi:
            raise KelpsegError(
                f"SynthConfig: dates_per_aoi must be (lo, hi) with 2 <= lo <= hi, got {lo, hi}"
            )


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_dataset` wrote."""

    n_train: int
    n_test: int
    n_aois: int
    n_with_kelp: int
    seconds: float
    data_dir: Path

    @property
    def tiles_per_second(self) -> float:
        return (self.n_train + self.n_test) / max(self.seconds, 1e-9)


# ---------------------------------------------------------------------------------------------
# plan (main process)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TileSpec:
    tile_id: str
    split: str
    date: int
    mislabelled: bool = False


@dataclass(frozen=True)
class _AoiSpec:
    name: str
    seed: np.random.SeedSequence
    kind: str
    kelp: bool
    tiles: tuple[_TileSpec, ...] = field(default_factory=tuple)
    #: px along x between consecutive dates of a chain AOI (0: not a chain)
    chain_step: int = 0


def _random_tile_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` unique ids of 2 uppercase letters + 6 digits."""
    letters = np.array(list(string.ascii_uppercase))
    ids: dict[str, None] = {}
    while len(ids) < n:
        k = n - len(ids)
        pairs = rng.choice(letters, size=(k, 2))
        nums = rng.integers(0, 1_000_000, size=k)
        for (a, b), num in zip(pairs, nums, strict=True):
            ids.setdefault(f"{a}{b}{num:06d}", None)
    return list(ids)


def _ids_from_csv(
    path: Path, n_train: int, n_test: int, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """Real ids from a metadata CSV (either form): a seeded sample of train ids and of test ids."""
    df = load_metadata(path)
    sat = df[df["type"] == SATELLITE]
    train = sat.loc[sat["in_train"], "tile_id"].tolist()
    test = sat.loc[~sat["in_train"], "tile_id"].tolist()
    if len(train) < n_train or len(test) < n_test:
        raise KelpsegError(
            f"{path}: holds {len(train)} train and {len(test)} test tile ids, "
            f"but {n_train} train and {n_test} test were asked for"
        )
    pick_train = sorted(rng.choice(len(train), size=n_train, replace=False).tolist())
    pick_test = sorted(rng.choice(len(test), size=n_test, replace=False).tolist())
    return [train[i] for i in pick_train], [test[i] for i in pick_test]


def _aoi_sizes(rng: np.random.Generator, n: int, cfg: SynthConfig) -> list[int]:
    sizes: list[int] = []
    lo, hi = cfg.dates_per_aoi
    while sum(sizes) < n:
        single = rng.random() < cfg.singleton_fraction
        sizes.append(1 if single else int(rng.integers(lo, hi + 1)))
    sizes[-1] -= sum(sizes) - n
    return [s for s in sizes if s > 0]


def _plan(
    train_ids: list[str], test_ids: list[str], seed: int, cfg: SynthConfig, rng: np.random.Generator
) -> list[_AoiSpec]:
    """Assign tiles to AOIs (splits mixed within an AOI, as in the competition) and draw AOI flags."""
    tiles = [(t, "train") for t in train_ids] + [(t, "test") for t in test_ids]
    order = rng.permutation(len(tiles))
    sizes = _aoi_sizes(rng, len(tiles), cfg)
    n_bad = round(cfg.mislabelled_fraction * len(train_ids))
    bad = set(rng.choice(train_ids, size=n_bad, replace=False).tolist()) if n_bad else set()
    # Kelp AOIs are drawn greedily in random order until they hold the target share of tiles,
    # which keeps the kelp fraction of small datasets close to the target.
    kelp_flags = [False] * len(sizes)
    target = cfg.kelp_aoi_tile_fraction * len(tiles)
    held = 0
    for i in rng.permutation(len(sizes)):
        if held + sizes[i] / 2 <= target:
            kelp_flags[i] = True
            held += sizes[i]
    kinds = rng.choice(
        ["water", "land", "coast"],
        size=len(sizes),
        p=[cfg.p_water_aoi, cfg.p_land_aoi, 1 - cfg.p_water_aoi - cfg.p_land_aoi],
    )
    seeds = np.random.SeedSequence([seed, 0x5EA]).spawn(len(sizes))
    steps = np.zeros(len(sizes), np.int64)
    if cfg.p_chain > 0 or cfg.p_open_water > 0:
        # revisit flags come from their own stream: with them off, the plan is the default one
        revisit = np.random.default_rng(np.random.SeedSequence([seed, 0xC4A]))
        chains = revisit.random(len(sizes)) < cfg.p_chain
        steps = np.where(chains, revisit.integers(TILE_SIZE // 5, TILE_SIZE // 3 + 1, len(sizes)), 0)
        kinds = np.where(revisit.random(len(sizes)) < cfg.p_open_water, "open_water", kinds)
    aois, start = [], 0
    for a, size in enumerate(sizes):
        members = [tiles[j] for j in order[start : start + size]]
        start += size
        specs = tuple(
            _TileSpec(tid, split, date, mislabelled=tid in bad) for date, (tid, split) in enumerate(members)
        )
        step = int(steps[a]) if size >= 3 and kinds[a] != "open_water" else 0
        kind = "coast" if step and kinds[a] == "water" else str(kinds[a])  # a chain follows a coast
        aois.append(_AoiSpec(f"aoi_{a:04d}", seeds[a], kind, kelp_flags[a], specs, step))
    return aois


# ---------------------------------------------------------------------------------------------
# noise fields
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _radial_frequency(size: int) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = np.inf  # zero mean: inf ** -x == 0
    return f


def spectral_noise(rng: np.random.Generator, size: int, betas: Sequence[float]) -> np.ndarray:
    """Fields of power spectrum ``1/f^beta`` (one per beta), float32 (k, size, size), mean 0, std 1."""
    f = _radial_frequency(size)
    amp = (f[None] ** (-np.asarray(betas, np.float64)[:, None, None] / 2.0)).astype(np.float32)
    shape = (len(betas), *f.shape)
    spec = np.empty(shape, np.complex64)
    spec.real = rng.standard_normal(shape, dtype=np.float32)
    spec.imag = rng.standard_normal(shape, dtype=np.float32)
    spec *= amp
    out = np.fft.irfft2(spec, s=(size, size), axes=(-2, -1)).astype(np.float32, copy=False)
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-12
    return out


def _fields(rng: np.random.Generator, betas: Sequence[float], size: int | tuple[int, int]) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    field_size = _NOISE_FIELD if max(h, w) <= _NOISE_FIELD else _fast_size(max(h, w))
    return spectral_noise(rng, field_size, betas)[:, :h, :w]


def _fast_size(n: int) -> int:
    """Smallest FFT-friendly size >= n."""
    from scipy.fft import next_fast_len

    return int(next_fast_len(n, real=True))


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _shift2d(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift the last two axes by (dy, dx) with zero fill (``out[y + dy, x + dx] = a[y, x]``)."""
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = a[..., ys, xs]
    return out


# ---------------------------------------------------------------------------------------------
# AOI canvas
# ---------------------------------------------------------------------------------------------


@dataclass
class _Canvas:
    """The static scene of one AOI (CANVAS x CANVAS pixels by default); tiles are crops of it."""

    dem: np.ndarray  # int16, FILL_VALUE beyond coverage
    water: np.ndarray  # bool
    surface: np.ndarray  # float32 (5, C, C) reflectance without kelp
    turbidity: np.ndarray  # float32 (C, C), 0 on land
    kelp_base: np.ndarray  # float32 (C, C) canopy density at vigour 1 (zeros without kelp)
    kelp_delta: np.ndarray  # float32 (5,) reflectance change at full density


_LAND_FRACTION = {"water": (0.01, 0.08), "land": (0.65, 0.90), "coast": (0.15, 0.60)}


def _canvas_shape(aoi: _AoiSpec, cfg: SynthConfig) -> tuple[tuple[int, int], int]:
    """(height, width) of an AOI's canvas and the chain step (px between consecutive dates, 0: none).

    The canvas holds every crop offset plus, with DEM misregistration on, its margin on each side.
    A chain's dates march along x by up to a third of a tile each.
    """
    margin = _DEM_MISREGISTRATION if cfg.p_dem_misregistration > 0 else 0
    side = TILE_SIZE + cfg.max_crop_offset + 2 * margin
    step = aoi.chain_step
    return (side, side + step * (len(aoi.tiles) - 1)), step


@dataclass
class _Terrain:
    """The elevation of one AOI canvas and what the surface is built from."""

    dem: np.ndarray  # int16, FILL_VALUE beyond coverage
    land: np.ndarray  # bool
    height: np.ndarray  # float32 in [0, 1], 0 at sea
    dist_land: np.ndarray  # float32 px to the nearest land (0 on land)
    dist_water: np.ndarray  # float32 px to the nearest water (0 at sea)


def _make_terrain(
    rng: np.random.Generator, kind: str, cfg: SynthConfig, shape: tuple[int, int], chain: bool = False
) -> _Terrain:
    """Elevation of a canvas. With crop offsets beyond the default, the land fraction is drawn for
    the core every date sees (a tile shows its coast wherever it was cropped), and a chain's
    coast runs along the chain."""
    h, w = shape
    field_size = _DEM_FIELD if max(h, w) <= CANVAS else _fast_size(max(h, w) + 2 * _DEM_MARGIN)
    # Elevation: fractal field plus a ramp, on a field larger than the canvas.
    z = spectral_noise(rng, field_size, [rng.uniform(2.6, 3.3)])[0]
    phi = rng.uniform(0, 2 * np.pi)
    if chain:
        phi = np.pi / 2 if np.sin(phi) >= 0 else -np.pi / 2  # land on one side of the strip
    yy, xx = np.mgrid[0:field_size, 0:field_size].astype(np.float32) / field_size - 0.5
    z += rng.uniform(1.0, 3.0) * (np.cos(phi) * xx + np.sin(phi) * yy) / 0.29 * (field_size / _DEM_FIELD)
    top, left = (field_size - h) // 2, (field_size - w) // 2
    inner = (slice(top, top + h), slice(left, left + w))
    if kind == "open_water":
        rng.uniform()  # keep the stream aligned with the other kinds
        level = float(z[inner].max()) + 1e-3  # land, if any, only beyond the canvas
    else:
        land_fraction = rng.uniform(*_LAND_FRACTION[kind])
        core = inner
        off = cfg.max_crop_offset + (_DEM_MISREGISTRATION if cfg.p_dem_misregistration > 0 else 0)
        if off > MAX_SHIFT:
            core = (
                slice(top + off, top + h - off),
                slice(left + (0 if chain else off), left + w - (0 if chain else off)),
            )
        level = np.quantile(z[core], 1.0 - land_fraction)
    land_full = ndimage.binary_fill_holes(z > level)  # no inland lakes: all water is sea
    dist_land = ndimage.distance_transform_edt(~land_full)[inner].astype(np.float32)
    dist_water = ndimage.distance_transform_edt(land_full)[inner].astype(np.float32)
    z = z[inner]
    land = land_full[inner]
    water = ~land

    height = np.clip((z - level) / max(float(z.max() - level), 1e-6), 0.0, 1.0)
    elevation = 1.0 + rng.uniform(80.0, 600.0) * height**1.4
    coverage = rng.uniform(*cfg.dem_coverage_px)
    dem = np.where(land, np.rint(elevation), 0.0)
    dem[water & (dist_land > coverage)] = FILL_VALUE
    return _Terrain(dem.astype(np.int16), land, height, dist_land, dist_water)


def _make_canvas(
    rng: np.random.Generator,
    kind: str,
    kelp: bool,
    cfg: SynthConfig,
    shape: tuple[int, int] = (CANVAS, CANVAS),
    chain: bool = False,
) -> _Canvas:
    terrain = _make_terrain(rng, kind, cfg, shape, chain)
    dem, land, height = terrain.dem, terrain.land, terrain.height
    dist_land, dist_water = terrain.dist_land, terrain.dist_water
    water = ~land
    h, w = shape

    cover, texture, turb, beds = _fields(rng, [2.4, 1.6, 3.0, rng.uniform(2.2, 2.9)], (h, w))
    # Land: vegetation on low ground, bare rock higher up, a beach or rocky shore at the coast.
    veg = np.clip(0.75 + 0.35 * cover - 0.6 * height, 0.0, 1.0)[None]
    land_refl = (veg * _VEGETATION[:, None, None] + (1 - veg) * _BARE[:, None, None]) * (1 + 0.07 * texture)
    patchy = np.clip(0.5 - 0.5 * cover, 0.0, 1.0)  # beaches where vegetation is thin
    shore = (_smoothstep(-dist_water, -2.0, -0.5) * patchy * rng.uniform(0.0, 0.8))[None]
    land_refl = (1 - shore) * land_refl + shore * _SAND[:, None, None]
    # Water: brighter green/red in the shallows, turbidity patches.
    shallow = np.exp(-dist_land / rng.uniform(3.0, 8.0))[None]
    turbidity = np.where(water, np.clip(0.5 + 0.35 * turb, 0, 1) * rng.uniform(0.1, 0.8), 0).astype(
        np.float32
    )
    water_refl = (
        _WATER_DEEP[:, None, None]
        + shallow * _WATER_SHALLOW[:, None, None]
        + turbidity[None] * _WATER_TURBID[:, None, None]
    )
    surface = np.where(land[None], land_refl, water_refl).astype(np.float32)
    surface = ndimage.gaussian_filter(surface, sigma=(0, 0.6, 0.6))  # sensor PSF: soft coastline

    kelp_base = np.zeros((h, w), np.float32)
    if kelp:
        max_dist = rng.uniform(*cfg.kelp_max_dist_px)
        zone = _smoothstep(dist_land, 0.5, 1.8) * (1 - _smoothstep(dist_land, 0.55 * max_dist, max_dist))
        in_zone = zone > 0.5
        if in_zone.any():
            t = np.quantile(beds[in_zone], 1.0 - rng.uniform(0.15, 0.45))
            bedness = np.clip((beds - t) / 0.7 + 0.5, 0.0, 1.0)
            kelp_base = (zone * bedness * rng.uniform(0.8, 1.2)).astype(np.float32)
    kelp_delta = _KELP_DELTA.copy()
    kelp_delta[BAND_INDEX["NIR"]] = rng.uniform(0.08, 0.16)
    return _Canvas(dem, water, surface, turbidity, kelp_base, kelp_delta)


# ---------------------------------------------------------------------------------------------
# one date
# ---------------------------------------------------------------------------------------------


@dataclass
class _Rendered:
    image: np.ndarray  # int16 (7, T, T)
    label: np.ndarray  # uint8 label as written (train: with label noise; test: clean)
    info: dict[str, Any]


def _stripe_gaps(rng: np.random.Generator) -> np.ndarray:
    """Landsat-7 SLC-off gaps: parallel diagonal stripes whose width grows along their length."""
    theta = np.deg2rad(rng.uniform(8.0, 20.0)) * rng.choice([-1.0, 1.0])
    period = rng.uniform(26.0, 36.0)
    w0, w1 = rng.uniform(0.0, 4.0), rng.uniform(5.0, 13.0)
    if rng.random() < 0.5:
        w0, w1 = w1, w0
    yy, xx = _grid()
    u = -xx * np.sin(theta) + yy * np.cos(theta)
    v = xx * np.cos(theta) + yy * np.sin(theta)
    width = w0 + (w1 - w0) * (v - v.min()) / (v.max() - v.min())
    return np.mod(u + rng.uniform(0, period), period) < width


@lru_cache(maxsize=1)
def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:TILE_SIZE, 0:TILE_SIZE].astype(np.float32)
    return yy, xx


def _clouds(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cloud opacity (soft edges), the QA flag (opacity >= 0.5) and the shadow weight."""
    big, detail = _fields(rng, [3.4, 2.0], TILE_SIZE)
    c = big + 0.35 * detail
    cover = rng.uniform(*cfg.cloud_cover)
    t = np.quantile(c, 1.0 - cover)
    alpha = np.clip(0.5 + (c - t) / rng.uniform(0.8, 2.0), 0.0, 1.0)
    qa = c > t
    angle = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(4.0, 14.0)
    shadow = _shift2d(alpha, round(dist * np.sin(angle)), round(dist * np.cos(angle))) * (1 - alpha)
    return alpha, qa, shadow


def _crop_offsets(rng: np.random.Generator, cfg: SynthConfig, chain_x: int) -> tuple[int, int, int, int]:
    """A date's crop offset in its canvas (x, y) and its DEM misregistration (dx, dy)."""
    sx, sy = (int(v) for v in rng.integers(0, cfg.max_crop_offset + 1, size=2))
    dem_dy = dem_dx = 0
    if cfg.p_dem_misregistration > 0:
        if rng.random() < cfg.p_dem_misregistration:
            while dem_dy == 0 and dem_dx == 0:
                dem_dy, dem_dx = (
                    int(v) for v in rng.integers(-_DEM_MISREGISTRATION, _DEM_MISREGISTRATION + 1, 2)
                )
        sx, sy = sx + _DEM_MISREGISTRATION, sy + _DEM_MISREGISTRATION
    return sx + chain_x, sy, dem_dx, dem_dy


def _dem_crop(dem: np.ndarray, x: int, y: int) -> np.ndarray:
    return dem[y : y + TILE_SIZE, x : x + TILE_SIZE]


def _render(
    canvas: _Canvas,
    spec: _TileSpec,
    kelp_date: bool,
    rng: np.random.Generator,
    cfg: SynthConfig,
    chain_x: int = 0,
) -> _Rendered:
    sx, sy, dem_dx, dem_dy = _crop_offsets(rng, cfg, chain_x)
    crop = (slice(sy, sy + TILE_SIZE), slice(sx, sx + TILE_SIZE))
    water = canvas.water[crop]
    refl = canvas.surface[(slice(None), *crop)].copy()
    refl += (rng.uniform(-0.4, 0.6) * canvas.turbidity[crop])[None] * _WATER_TURBID[:, None, None]

    kelp = np.zeros((TILE_SIZE, TILE_SIZE), bool)
    if kelp_date and canvas.kelp_base.any():
        (patch,) = _fields(rng, [2.2], TILE_SIZE)
        density = np.clip(canvas.kelp_base[crop] * rng.uniform(0.55, 1.3) * (1 + 0.45 * patch), 0.0, 1.0)
        density *= water
        refl += density[None] * canvas.kelp_delta[:, None, None]
        kelp = density > cfg.kelp_threshold

    qa = np.zeros((TILE_SIZE, TILE_SIZE), bool)
    if rng.random() < cfg.p_cloud:
        alpha, qa, shadow = _clouds(rng, cfg)
        refl *= 1 - rng.uniform(0.3, 0.6) * shadow[None]
        cloud = _CLOUD[:, None, None] * rng.uniform(0.8, 1.05)
        refl = refl * (1 - alpha[None]) + cloud * alpha[None]

    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.97, 1.03, size=_N_SPECTRAL).astype(np.float32)
    offset = ZERO_DN + rng.uniform(0.0, 1.0) * _HAZE_DN + rng.normal(0.0, 30.0, size=_N_SPECTRAL)
    dn = refl * (gain / REFLECTANCE_SCALE)[:, None, None]
    dn += offset.astype(np.float32)[:, None, None]
    dn += rng.standard_normal(dn.shape, dtype=np.float32) * np.float32(cfg.noise_sigma)
    spectral = np.clip(np.rint(dn), 1, 32767).astype(np.int16)

    stripes = rng.random() < cfg.p_stripes
    if stripes:
        spectral[:, _stripe_gaps(rng)] = FILL_VALUE

    image = np.empty((7, TILE_SIZE, TILE_SIZE), np.int16)
    image[:_N_SPECTRAL] = spectral
    image[BAND_INDEX["QA"]] = qa
    image[BAND_INDEX["DEM"]] = _dem_crop(canvas.dem, sx + dem_dx, sy + dem_dy)

    clean = kelp & ~qa  # labellers do not see kelp under opaque cloud
    label = clean.copy()
    dy = dx = 0
    if spec.split == "train":
        if rng.random() < cfg.p_misaligned:
            while dy == 0 and dx == 0:
                dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
            label = _shift2d(label, dy, dx)
        if spec.mislabelled:
            (blob,) = _fields(rng, [3.0], TILE_SIZE)
            label |= blob > np.quantile(blob, 1.0 - rng.uniform(0.45, 0.7))
    info = {
        "tile_id": spec.tile_id,
        "split": spec.split,
        "shift_x": sx,
        "shift_y": sy,
        "date": spec.date,
        "label_dx": dx,
        "label_dy": dy,
        "mislabelled": spec.mislabelled,
        "cloud_fraction": round(float(qa.mean()), 4),
        "stripes": stripes,
        "kelp_pixels": int(label.sum()),
    }
    if cfg.p_dem_misregistration > 0:
        info.update(dem_dx=dem_dx, dem_dy=dem_dy)
    return _Rendered(image, label.astype(np.uint8), info)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def _write_tif(path: Path, array: np.ndarray) -> None:
    """Deflate GeoTIFF without CRS, atomically. zlevel 1: ~1.5x faster than the default level 6,
    and on noisy int16 reflectance barely larger."""
    write_geotiff(path, array, str(array.dtype), zlevel=1)


def _file_facts(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.md5(data).hexdigest(), len(data)


def _generate_aoi(root: str, aoi: _AoiSpec, cfg: SynthConfig) -> list[dict[str, Any]]:
    """Make and write every date of one AOI; returns one record per tile (runs in a worker)."""
    layout = DataLayout(Path(root))
    shape, step = _canvas_shape(aoi, cfg)
    canvas_seed, *tile_seeds = aoi.seed.spawn(1 + len(aoi.tiles))
    canvas_rng = np.random.default_rng(canvas_seed)
    canvas = _make_canvas(canvas_rng, aoi.kind, aoi.kelp, cfg, shape, step > 0)
    kelp_dates = aoi.kelp & (canvas_rng.random(len(aoi.tiles)) >= cfg.p_kelp_free_date)
    records = []
    for spec, seed, kelp_date in zip(aoi.tiles, tile_seeds, np.atleast_1d(kelp_dates), strict=True):
        out = _render(canvas, spec, bool(kelp_date), np.random.default_rng(seed), cfg, spec.date * step)
        image_path = layout.image_path(spec.tile_id, spec.split)
        _write_tif(image_path, out.image)
        record = dict(out.info, aoi=aoi.name)
        record["image_md5"], record["image_size"] = _file_facts(image_path)
        if spec.split == "train":
            mask_path = layout.mask_path(spec.tile_id)
            _write_tif(mask_path, out.label)
            record["mask_md5"], record["mask_size"] = _file_facts(mask_path)
        else:
            _write_tif(layout.truth_test_masks / mask_name(spec.tile_id), out.label)
        records.append(record)
    return records


def _run(root: Path, aois: list[_AoiSpec], cfg: SynthConfig, workers: int, progress: bool) -> Iterator[dict]:
    from kelpseg.progress import bar as progress_bar

    total = sum(len(a.tiles) for a in aois)
    # Largest AOIs first: better load balance across workers.
    ordered = sorted(aois, key=lambda a: -len(a.tiles))
    with progress_bar(total, "synthetic tiles", enabled=progress, leave=True) as bar:
        if workers <= 1 or len(aois) <= 1:
            for aoi in ordered:
                records = _generate_aoi(str(root), aoi, cfg)
                bar.update(len(records))
                yield from records
            return
        pool = process_pool(min(workers, len(aois)))
        try:
            futures = [pool.submit(_generate_aoi, str(root), aoi, cfg) for aoi in ordered]
            for fut in as_completed(futures):
                records = fut.result()
                bar.update(len(records))
                yield from records
        except BaseException:
            abandon_pool(pool)
            raise
        pool.shutdown()


def _check_overwrite(layout: DataLayout, overwrite: bool) -> None:
    """Refuse to replace tiles unless asked to (or they are an interrupted synth's partial output)."""
    existing = list(layout.raw.rglob("*.tif")) if layout.raw.exists() else []
    if existing and not overwrite and not (layout.raw / INCOMPLETE_MARKER).exists():
        raise KelpsegError(
            f"{layout.raw}: already holds {len(existing)} tile file(s); refusing to overwrite "
            "(pass overwrite=True / --overwrite to replace raw/ and truth/)"
        )


def _clear_dir(layout: DataLayout) -> None:
    """Empty raw/ (all but its incomplete marker, written first) and remove truth/."""
    for entry in layout.raw.iterdir():
        if entry.name == INCOMPLETE_MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if layout.truth.exists():
        shutil.rmtree(layout.truth)


def _metadata_frame(records: dict[str, dict], train_ids: list[str], test_ids: list[str]) -> pd.DataFrame:
    """Rows as the competition file orders them: train images, test images, then train masks."""
    rows = []
    for tid in train_ids:
        r = records[tid]
        rows.append((tid, image_name(tid), r["image_md5"], r["image_size"], SATELLITE, True))
    for tid in test_ids:
        r = records[tid]
        rows.append((tid, image_name(tid), r["image_md5"], r["image_size"], SATELLITE, False))
    for tid in train_ids:
        r = records[tid]
        rows.append((tid, mask_name(tid), r["mask_md5"], r["mask_size"], KELP, True))
    cols = ["tile_id", "filename", "md5_hash", "filesize_bytes", "type", "in_train"]
    return pd.DataFrame(rows, columns=cols)


_TRUTH_COLUMNS = [
    "tile_id",
    "split",
    "aoi",
    "shift_x",
    "shift_y",
    "date",
    "label_dx",
    "label_dy",
    "mislabelled",
    "cloud_fraction",
    "stripes",
    "kelp_pixels",
]


def generate_dataset(
    data_dir: Path | str,
    n_train: int,
    n_test: int,
    seed: int = 0,
    *,
    tile_ids_from: Path | str | None = None,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    config: SynthConfig | None = None,
) -> SynthSummary:
    """Write a synthetic dataset of ``n_train`` labelled and ``n_test`` unlabelled tiles.

    Files go exactly where :class:`~kelpseg.layout.DataLayout` says (``raw/`` in the competition
    layout plus the six-column metadata CSV; ``truth/`` with the test masks and the AOI table).
    ``tile_ids_from`` takes real ids from a metadata CSV (either form) instead of random ones.
    The output depends only on ``seed``, ``config`` and the ids, not on ``workers``.
    A ``raw/`` that already holds tiles is refused unless ``overwrite``; then ``raw/`` and
    ``truth/`` are removed first (``truth/`` is always rewritten).
    """
    start = time.perf_counter()
    cfg = config or SynthConfig()
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise KelpsegError(
            f"need n_train >= 0, n_test >= 0 and at least one tile, got {n_train} and {n_test}"
        )
    if workers < 1:
        raise KelpsegError(f"workers must be >= 1, got {workers}")
    if seed < 0:
        raise KelpsegError(f"seed must be >= 0, got {seed}")
    layout = DataLayout(Path(data_dir))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1D5]))
    if tile_ids_from is not None:
        train_ids, test_ids = _ids_from_csv(Path(tile_ids_from), n_train, n_test, rng)
    else:
        ids = _random_tile_ids(rng, n_train + n_test)
        train_ids, test_ids = ids[:n_train], ids[n_train:]
    aois = _plan(train_ids, test_ids, seed, cfg, rng)
    _check_overwrite(layout, overwrite)
    # raw/ counts as complete only once every tile, the metadata and truth/ are written: a killed
    # synth leaves the marker, which check-data and every stage reading the catalog refuse.
    with stage_outputs(layout.raw, "synth", "synth"):
        _clear_dir(layout)
        layout.truth_test_masks.mkdir(parents=True, exist_ok=True)
        for d in (layout.train_images, layout.train_masks, layout.test_images):
            d.mkdir(parents=True, exist_ok=True)
        records = {r["tile_id"]: r for r in _run(layout.root, aois, cfg, workers, progress)}
        write_metadata(layout.metadata_csv, _metadata_frame(records, train_ids, test_ids))
        columns = _TRUTH_COLUMNS + (["dem_dx", "dem_dy"] if cfg.p_dem_misregistration > 0 else [])
        truth = pd.DataFrame([records[t] for t in train_ids + test_ids])[columns]
        with atomic_path(layout.truth_aoi_table) as tmp:
            truth.to_csv(tmp, index=False)
    n_with_kelp = sum(1 for t in train_ids if records[t]["kelp_pixels"] > 0)
    return SynthSummary(
        n_train=n_train,
        n_test=n_test,
        n_aois=len(aois),
        n_with_kelp=n_with_kelp,
        seconds=time.perf_counter() - start,
        data_dir=layout.root,
    )


def generate_dems(
    n_train: int, n_test: int, seed: int = 0, config: SynthConfig | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """The DEM band of every tile :func:`generate_dataset` would write, without writing anything.

    Returns the truth table (``tile_id, split, aoi, shift_x, shift_y, dem_dx, dem_dy``, train
    tiles first, as in the metadata) and the DEMs, int16 (N, 350, 350), in the same order: a
    fast way to test AOI grouping on many datasets.
    """
    cfg = config or SynthConfig()
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise KelpsegError(
            f"need n_train >= 0, n_test >= 0 and at least one tile, got {n_train} and {n_test}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1D5]))
    ids = _random_tile_ids(rng, n_train + n_test)
    aois = _plan(ids[:n_train], ids[n_train:], seed, cfg, rng)
    rows: dict[str, dict[str, Any]] = {}
    dems: dict[str, np.ndarray] = {}
    for aoi in aois:
        shape, step = _canvas_shape(aoi, cfg)
        canvas_seed, *tile_seeds = aoi.seed.spawn(1 + len(aoi.tiles))
        dem = _make_terrain(np.random.default_rng(canvas_seed), aoi.kind, cfg, shape, step > 0).dem
        for spec, tile_seed in zip(aoi.tiles, tile_seeds, strict=True):
            sx, sy, dx, dy = _crop_offsets(np.random.default_rng(tile_seed), cfg, spec.date * step)
            dems[spec.tile_id] = _dem_crop(dem, sx + dx, sy + dy)
            rows[spec.tile_id] = {
                "tile_id": spec.tile_id,
                "split": spec.split,
                "aoi": aoi.name,
                "shift_x": sx,
                "shift_y": sy,
                "dem_dx": dx,
                "dem_dy": dy,
            }
    return pd.DataFrame([rows[t] for t in ids]), np.stack([dems[t] for t in ids])


# ---------------------------------------------------------------------------------------------
# preview
# ---------------------------------------------------------------------------------------------


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Joint 2-98 percentile stretch; a water-only tile stays dark instead of being blown up."""
    from kelpseg.plotting import joint_stretch

    return joint_stretch(rgb, valid, min_range=_MIN_STRETCH_DN)


def _spread_over_aois(layout: DataLayout, tile_ids: list[str]) -> list[str]:
    """Order ids so that consecutive ones come from different AOIs when the truth table says so."""
    if not layout.truth_aoi_table.exists():
        return tile_ids
    aoi = pd.read_csv(layout.truth_aoi_table, dtype=str).set_index("tile_id")["aoi"].to_dict()
    seen: dict[str, int] = {}
    rank = {}
    for t in tile_ids:
        group = aoi.get(t, t)
        rank[t] = seen.get(group, 0)
        seen[group] = rank[t] + 1
    return sorted(tile_ids, key=lambda t: (rank[t], t))


def _pick_preview_tiles(layout: DataLayout, n_tiles: int) -> list[tuple[str, np.ndarray | None]]:
    train = sorted(tile_id_from_path(p) for p in layout.train_images.glob("*_satellite.tif"))
    masks = {t: read_mask(layout.mask_path(t)) for t in train if layout.mask_path(t).exists()}
    train = _spread_over_aois(layout, train)
    with_kelp = [t for t in train if t in masks and masks[t].any()]
    without = [t for t in train if t not in with_kelp]
    n_kelp = min(len(with_kelp), max(n_tiles - len(without), (2 * n_tiles + 2) // 3))
    chosen = with_kelp[:n_kelp] + without[: n_tiles - n_kelp]
    if len(chosen) < n_tiles:  # too few train tiles: fill up with test tiles
        test = sorted(tile_id_from_path(p) for p in layout.test_images.glob("*_satellite.tif"))
        chosen += test[: n_tiles - len(chosen)]
    return [(t, masks.get(t)) for t in sorted(chosen)]


def _draw_rgb(ax: Any, data: np.ndarray, mask: np.ndarray | None, title: str) -> None:
    rgb = data[[BAND_INDEX["R"], BAND_INDEX["G"], BAND_INDEX["B"]]]
    ax.imshow(_stretch(rgb, data[BAND_INDEX["QA"]] == 0), interpolation="nearest")
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors="#ff2d2d", linewidths=0.7)
    ax.set_title(title, fontsize=8)


def _draw_nir(ax: Any, data: np.ndarray, tile_id: str) -> None:
    import matplotlib.pyplot as plt

    nir = data[BAND_INDEX["NIR"]]
    values = nir[(data[BAND_INDEX["QA"]] == 0) & np.isfinite(nir)]
    lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
    cmap = plt.get_cmap("gray").with_extremes(bad="black")
    ax.imshow(nir, cmap=cmap, vmin=lo, vmax=max(hi, lo + _MIN_STRETCH_DN), interpolation="nearest")
    ax.set_title(f"{tile_id} NIR (black: gaps)", fontsize=8)


def _draw_dem(fig: Any, ax: Any, data: np.ndarray, tile_id: str) -> None:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("terrain").with_extremes(bad="#404040")
    im = ax.imshow(
        np.ma.masked_invalid(data[BAND_INDEX["DEM"]]), cmap=cmap, vmin=-50, interpolation="nearest"
    )
    ax.set_title(f"{tile_id} DEM m (grey: nodata)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)


def write_preview(data_dir: Path | str, out_png: Path | str, n_tiles: int = 12, dpi: int = 80) -> Path:
    """Grid of tiles: true colour (R, G, B) with the kelp mask outlined; then NIR and DEM rows.

    Mostly tiles with kelp are shown (two thirds when there are enough), spread over AOIs when
    ``truth/aoi_membership.csv`` exists. The colour stretch is one 2-98 percentile range for the
    three colours together (so water keeps its hue) over cloud-free, non-gap pixels; gaps
    (-32768) are black. The NIR and DEM rows show the first tiles with kelp.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = DataLayout(Path(data_dir))
    tiles = _pick_preview_tiles(layout, n_tiles)
    if not tiles:
        raise KelpsegError(f"{layout.raw}: no tiles to preview; run the synthetic generator first")
    ncols = min(4, len(tiles))
    rgb_rows = -(-len(tiles) // ncols)
    fig, axes = plt.subplots(rgb_rows + 2, ncols, figsize=(3.2 * ncols, 3.3 * (rgb_rows + 2)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    data = {}
    for i, (tid, mask) in enumerate(tiles):
        split = "train" if layout.image_path(tid, "train").exists() else "test"
        data[tid] = read_tile(layout.image_path(tid, split))
        kelp = "" if mask is None else f", kelp={int(mask.sum())}"
        _draw_rgb(axes[i // ncols, i % ncols], data[tid], mask, f"{tid} ({split}{kelp})")
    detail = sorted(tiles, key=lambda tm: tm[1] is None or not tm[1].any())[:ncols]
    for i, (tid, _) in enumerate(detail):
        _draw_nir(axes[rgb_rows, i], data[tid], tid)
        _draw_dem(fig, axes[rgb_rows + 1, i], data[tid], tid)
    fig.suptitle(
        f"{len(tiles)} tiles of {layout.root.name}/: true colour (R, G, B) with the kelp label "
        "outlined in red; bottom rows: NIR and DEM",
        fontsize=10,
    )
    fig.tight_layout()
    out = save_figure(Path(out_png), fig, dpi=dpi)
    plt.close(fig)
    return out
