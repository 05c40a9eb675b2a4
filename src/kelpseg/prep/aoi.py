"""AOI grouping: find tiles (train and test) that show the same place at different dates.

Cross-validation folds must keep every view of one place on the same side, otherwise the model
is scored on terrain it has already seen. The GeoTIFFs carry no coordinates, so the place is
recognised from the pixels. The spectral bands change with the date (clouds, sun, tide); the
elevation band (DEM) does not: two dates of one place hold the same elevations, cropped at
another offset (up to a third of a tile or more) and sometimes misregistered by a pixel or two.
So the grouping works on the DEM only, with no pretrained network, and links tiles by two kinds
of evidence:

1. **Exact elevation** (``"exact-dem"``). Every 5 x 5 px window of integer elevations that is
   all valid DEM, mostly land and not flat is hashed from its values alone
   (:func:`patch_hashes`). A tile keeps as keys the windows with its ``keys_per_tile``
   smallest hashes plus every window whose hash is the smallest within ``local_min_window`` px
   around it (:func:`elevation_keys`). Both choices depend on the values, not on where the tile
   was cropped, so two crops of one place share keys at one constant offset, the crop offset,
   whatever its size; the local minima keep that true where the overlap is a small part of a
   tile with much land. All keys of all tiles are sorted once; two tiles sharing at least
   ``min_key_votes`` keys *at the same offset* are linked (:func:`exact_links`). Keys held by
   more than ``max_tiles_per_key`` tiles are common shapes and cast no vote.
2. **Detail correlation** (``"detail-correlation"``), the fallback for DEMs that are not
   bit-identical between dates (resampled, re-quantised). Per tile, from the relief
   ``log1p(max(DEM, 0))`` block-averaged by ``block`` px: a *coarse vector* (the thumbnail on a
   ``search_grid`` grid, unit norm) for the candidate search and a *detail thumbnail* (a
   difference of Gaussians: terrain texture and coastline shape without the "land on this
   side" trend). Each usable tile's ``n_neighbors`` nearest coarse vectors (PCA, chunked brute
   force) are candidates; a candidate pair not already in one group by exact links is verified
   by the best Pearson correlation of the detail thumbnails over shifts up to ``max_shift`` px
   (:func:`shifted_correlation`) and linked at ``threshold`` or above.
3. **Groups** are the connected components of all links (a full transitive closure, no size
   cap that would split a large group back into leaking singletons).

**Tiles that cannot be placed.** A tile with no usable terrain (under ``min_land_fraction``
land, e.g. open water or all nodata) and no link of either kind cannot be recognised. Giving
each its own group would be safe only if each really showed a unique place; several dates of
one stretch of open water would then be scattered over the folds. So they are *pooled* into
one "unplaced" group (``AoiParams(pool_unplaced=False)`` keeps each alone instead). The split
(:mod:`kelpseg.prep.split`) treats it like any group: all its tiles go to one validation fold,
so no unplaced place straddles folds, at the price of one fold holding them all. A tile without
usable terrain that *is* linked (its few land pixels match another tile's) joins that group.

**Evidence.** ``aoi_groups.json`` lists, per group, ``joined_by`` (how many links of each kind
hold it together, ``"single tile"`` or the pooled-unplaced label) and the links of a spanning
tree of the group (exact links with many shared keys first) with their tiles, shared keys and
offset, or correlation (:func:`group_evidence`); it also gives ``unplaced_aoi_id``.
``aoi_report.json`` adds the counts (``n_unplaced``, ``links_by_evidence``) and the time of each
step.

``aoi_id`` values are dense integers numbered in catalog order (train first, then tile id) of
each group's first member, so the same data give the same ids.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from kelpseg.bands import FILL_VALUE
from kelpseg.errors import KelpsegError, StageNotRunError
from kelpseg.io.atomic import write_json, write_parquet
from kelpseg.io.catalog import load_catalog
from kelpseg.io.tiles import read_tile
from kelpseg.layout import DataLayout
from kelpseg.parallel import pmap

METHOD = "dem-exact-patches+detail-shift-correlation"
UNPLACED = "unplaced: no usable terrain and no link (pooled)"
AOI_COLUMNS = ("tile_id", "split", "aoi_id", "usable")


@dataclass(frozen=True)
class AoiParams:
    """Knobs of the grouping (defaults tuned on synthetic data, see the module docstring)."""

    #: Minimum shift-tolerant correlation of two detail thumbnails for "same place". On synthetic
    #: data dates of one place score >= 0.84 and different places <= 0.50 (the hard cases are
    #: tiles with under 5% land; with more land different places stay below 0.25).
    threshold: float = 0.65
    #: Block size (px) of the verification thumbnail; must divide the tile size.
    block: int = 5
    #: Largest shift (px) between two dates of one place that the verification searches.
    max_shift: int = 8
    #: Gaussian sigmas (in blocks) whose difference gives the detail thumbnail.
    detail_sigmas: tuple[float, float] = (0.6, 2.4)
    #: Below this fraction of land pixels a tile has no usable terrain.
    min_land_fraction: float = 0.005
    #: Candidates per tile from the nearest-neighbour search.
    n_neighbors: int = 10
    #: Side of the coarse grid used for the candidate search.
    search_grid: int = 14
    #: Candidate pairs whose coarse-grid cosine similarity is below this are not verified.
    min_search_similarity: float = 0.7
    #: PCA dimensions of the candidate search vectors (skipped when there are fewer tiles).
    search_dims: int = 32
    #: Candidate pairs verified per vectorised batch.
    batch_pairs: int = 1024
    #: Side (px) of the exact-elevation patches hashed for the offset-free match.
    patch: int = 5
    #: A patch is a key only if it is all valid DEM, at least this many of its pixels are land ...
    patch_min_land: int = 13
    #: ... and its elevations span at least this many metres (flat ground repeats everywhere).
    patch_min_range: float = 3.0
    #: Keys kept per tile: the ones with the smallest hashes (a consistent sample of its patches).
    keys_per_tile: int = 128
    #: ... plus every patch whose hash is the smallest in the window of this side (px) around it.
    local_min_window: int = 11
    #: Keys shared by more tiles than this are common shapes, not evidence of one place.
    max_tiles_per_key: int = 64
    #: Shared keys at one and the same offset needed to link two tiles by exact elevation.
    min_key_votes: int = 3
    #: Tiles with neither usable terrain nor any link go to one shared "unplaced" group (the
    #: leakage-safe choice, see the module docstring); False keeps each of them alone.
    pool_unplaced: bool = True


@dataclass(frozen=True)
class TileDescriptor:
    """What the grouping needs from one tile."""

    coarse: np.ndarray  # (search_grid**2,) float32, mean-removed, unit norm (zeros if constant)
    detail: np.ndarray  # (S, S) float32 band-passed block-mean relief
    land_fraction: float
    usable: bool
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # (K,) patch hashes
    key_yx: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int16))  # (K, 2) patch corners


@dataclass
class AoiResult:
    """The AOI table plus what the report says about it."""

    table: pd.DataFrame
    groups: list[list[str]]
    threshold: float
    params: AoiParams
    n_groups: int
    n_unusable: int
    size_histogram: dict[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    n_candidate_pairs: int = 0
    n_linked_pairs: int = 0
    #: per group (in aoi_id order): how it was joined, see :func:`group_evidence`
    evidence: list[dict[str, Any]] = field(default_factory=list)
    n_unplaced: int = 0
    unplaced_aoi_id: int | None = None

    def report(self) -> dict[str, Any]:
        n = len(self.table)
        return {
            "method": METHOD,
            "threshold": self.threshold,
            "params": asdict(self.params),
            "n_tiles": n,
            "n_train": int((self.table["split"] == "train").sum()),
            "n_test": int((self.table["split"] == "test").sum()),
            "n_groups": self.n_groups,
            "n_unusable": self.n_unusable,
            "largest_group": max(self.size_histogram) if self.size_histogram else 0,
            "group_size_histogram": {str(k): v for k, v in sorted(self.size_histogram.items())},
            "n_unplaced": self.n_unplaced,
            "unplaced_aoi_id": self.unplaced_aoi_id,
            "n_candidate_pairs": self.n_candidate_pairs,
            "n_linked_pairs": self.n_linked_pairs,
            "links_by_evidence": dict(Counter(e for g in self.evidence for e in g["joined_by"])),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "seconds_per_1000_tiles": round(1000 * sum(self.timings.values()) / max(n, 1), 3),
        }


# ---- per-tile descriptor ----------------------------------------------------------------------
def relief(dem: np.ndarray) -> np.ndarray:
    """Elevation compressed for matching: ``log1p(max(dem, 0))``; water and nodata (NaN or -32768) -> 0.

    The log keeps low coastal land (where the outline is) from being drowned by mountains.
    """
    dem = np.asarray(dem, dtype=np.float32)
    valid = np.isfinite(dem) & (dem != FILL_VALUE)
    return np.log1p(np.where(valid & (dem > 0), dem, 0.0)).astype(np.float32)


def land_fraction(dem: np.ndarray) -> float:
    """Fraction of pixels with a valid DEM above sea level."""
    dem = np.asarray(dem)
    land = np.isfinite(dem) & (dem != FILL_VALUE) & (dem > 0)
    return float(land.mean())


def block_mean(image: np.ndarray, block: int) -> np.ndarray:
    """Average non-overlapping ``block`` x ``block`` cells of a 2-D array (sides must divide)."""
    h, w = image.shape[-2:]
    if h % block or w % block:
        raise ValueError(f"block {block} must divide the image size {h}x{w}")
    lead = image.shape[:-2]
    return image.reshape(*lead, h // block, block, w // block, block).mean(axis=(-3, -1))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of a 2-D array, mean-removed and scaled to unit L2 norm (constant rows -> zeros)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 1e-12, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def detail(thumb: np.ndarray, sigmas: tuple[float, float] = (0.6, 2.4)) -> np.ndarray:
    """Band-pass of a (…, S, S) thumbnail: Gaussian blur ``sigmas[0]`` minus blur ``sigmas[1]``."""
    from scipy.ndimage import gaussian_filter

    thumb = np.asarray(thumb, dtype=np.float32)
    lead = (0.0,) * (thumb.ndim - 2)  # no blur across stacked thumbnails
    fine = gaussian_filter(thumb, (*lead, sigmas[0], sigmas[0]), mode="nearest")
    broad = gaussian_filter(thumb, (*lead, sigmas[1], sigmas[1]), mode="nearest")
    return (fine - broad).astype(np.float32)


def describe_dem(dem: np.ndarray, params: AoiParams = AoiParams()) -> TileDescriptor:
    """Descriptor of one tile's DEM (2-D, or (1, H, W); NaN or -32768 for nodata)."""
    dem = np.asarray(dem, dtype=np.float32)
    if dem.ndim == 3:
        dem = dem[0]
    thumb = block_mean(relief(dem), params.block).astype(np.float32)
    cell = thumb.shape[0] // params.search_grid
    if cell < 1 or thumb.shape[0] % params.search_grid:
        raise ValueError(f"search grid {params.search_grid} must divide the thumbnail size {thumb.shape[0]}")
    coarse = unit_rows(block_mean(thumb, cell).reshape(1, -1))[0]
    band = detail(thumb, params.detail_sigmas)
    frac = land_fraction(dem)
    usable = frac >= params.min_land_fraction and float(band.std()) > 1e-6
    keys, key_yx = elevation_keys(dem, params)
    return TileDescriptor(
        coarse=coarse, detail=band, land_fraction=frac, usable=bool(usable), keys=keys, key_yx=key_yx
    )


# ---- exact-elevation keys ---------------------------------------------------------------------
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)
_ROW_MULT = np.uint64(0xD6E8FEB86659FD93)
_NO_KEY = np.uint64(np.iinfo(np.uint64).max)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the whole 64-bit hash (uint64 wraps).

    Works in place on a fresh array (``h`` is copied once), so no temporaries are made.
    """
    h = np.array(h, dtype=np.uint64, copy=True)
    tmp = np.empty_like(h)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None)):
        np.right_shift(h, np.uint64(shift), out=tmp)
        np.bitwise_xor(h, tmp, out=h)
        if mult is not None:
            np.multiply(h, np.uint64(mult), out=h)
    return h


#: ``_mix`` of every int16 value (as its int64 bits), for :func:`patch_hashes`
_VALUE_MIX = _mix(np.arange(-(1 << 15), 1 << 15, dtype=np.int64).astype(np.uint64))


def _windows(x: np.ndarray, p: int, op: Any) -> np.ndarray:
    """``op`` (np.add, np.maximum, ...) over every p x p window of a 2-D array: (H-p+1, W-p+1).

    Separable: p - 1 element-wise passes per axis, cheaper than a generic filter for small p.
    """
    h, w = x.shape
    rows = x[:, : w - p + 1].copy()
    for j in range(1, p):
        op(rows, x[:, j : j + w - p + 1], out=rows)
    out = rows[: h - p + 1].copy()
    for i in range(1, p):
        op(out, rows[i : i + h - p + 1], out=out)
    return out


def patch_hashes(values: np.ndarray, p: int) -> np.ndarray:
    """A 64-bit hash of the exact integer values of every p x p patch: (H-p+1, W-p+1) uint64.

    Row then column polynomial hashing (2p multiply-adds per pixel); equal patches anywhere in
    any tile hash equal, so a match needs no offset search.
    """
    values = np.asarray(values)
    if values.size and (values.min() < -(1 << 15) or values.max() >= 1 << 15):
        v = _mix(values.astype(np.int64).astype(np.uint64))
    else:  # int16 range (every DEM): a table lookup instead of mixing each pixel
        v = _VALUE_MIX[values.astype(np.int64) + (1 << 15)]
    h, w = v.shape
    rows = v[:, : w - p + 1].copy()
    for j in range(1, p):
        np.multiply(rows, _HASH_MULT, out=rows)
        np.add(rows, v[:, j : j + w - p + 1], out=rows)
    out = rows[: h - p + 1].copy()
    for i in range(1, p):
        np.multiply(out, _ROW_MULT, out=out)
        np.add(out, rows[i : i + h - p + 1], out=out)
    return _mix(out)


def elevation_keys(dem: np.ndarray, params: AoiParams = AoiParams()) -> tuple[np.ndarray, np.ndarray]:
    """Keys of a tile's terrain that do not depend on where the tile was cropped.

    Every ``patch`` x ``patch`` window of exact elevations that is all valid DEM, mostly land and
    not flat is hashed (:func:`patch_hashes`); hashes seen twice in the tile are dropped, and the
    ``keys_per_tile`` smallest are kept with their window corners. Two crops of one DEM keep the
    same windows of their overlap (a window is kept by its hash value, wherever it lies), so they
    share keys at one constant offset: the crop offset, however large.
    Returns (K,) uint64 keys and (K, 2) int16 corners (y, x).
    """
    dem = np.asarray(dem, dtype=np.float32)
    if dem.ndim == 3:
        dem = dem[0]
    p = params.patch
    valid = np.isfinite(dem) & (dem != FILL_VALUE)
    if not valid.any() or min(dem.shape) < p:
        return np.zeros(0, np.uint64), np.zeros((0, 2), np.int16)
    values = np.where(valid, np.rint(np.where(valid, dem, 0)), 0).astype(np.int32)
    land = valid & (values > 0)
    if land.sum() < params.patch_min_land:
        return np.zeros(0, np.uint64), np.zeros((0, 2), np.int16)
    ok = _windows(valid, p, np.logical_and)
    ok &= _windows(land.astype(np.uint8), p, np.add) >= params.patch_min_land
    ok &= _windows(values, p, np.maximum) - _windows(values, p, np.minimum) >= params.patch_min_range
    if not ok.any():
        return np.zeros(0, np.uint64), np.zeros((0, 2), np.int16)
    # hash only the box holding every kept window (a mostly-water tile is a small box)
    rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    ok = ok[y0:y1, x0:x1]
    grid = np.where(ok, patch_hashes(values[y0 : y1 + p - 1, x0 : x1 + p - 1], p), _NO_KEY)
    ys, xs = np.nonzero(ok)
    hashes = grid[ys, xs]
    # local minima: two crops share them wherever their overlap has terrain, however small
    local = np.zeros(len(hashes), bool)
    if params.local_min_window > 1:
        from scipy.ndimage import minimum_filter

        low = minimum_filter(grid, params.local_min_window, mode="constant", cval=_NO_KEY)
        local = hashes == low[ys, xs]
    k = 2 * params.keys_per_tile
    if len(hashes) > k:  # only the smallest hashes can be kept: sort those alone
        pick = np.flatnonzero(local | (hashes <= np.partition(hashes, k - 1)[k - 1]))
        hashes, ys, xs, local = hashes[pick], ys[pick], xs[pick], local[pick]
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    unique = first[counts == 1]  # unique in the tile, by increasing hash
    keep = np.zeros(len(hashes), bool)
    keep[unique[: params.keys_per_tile]] = True  # the tile's smallest hashes ...
    keep[unique[local[unique]]] = True  # ... and its local minima
    keep = np.flatnonzero(keep)
    keep = keep[np.argsort(hashes[keep], kind="stable")]
    return hashes[keep], np.stack([ys[keep] + y0, xs[keep] + x0], axis=1).astype(np.int16)


@dataclass
class Links:
    """Pairs of tiles linked by some evidence (indices into the tile list)."""

    pairs: np.ndarray  # (E, 2) int64, i < j
    evidence: np.ndarray  # (E,) str: "exact-dem" or "detail-correlation"
    strength: np.ndarray  # (E,) float: shared keys at the offset, or the correlation
    offset: (
        np.ndarray
    )  # (E, 2) int64: (dy, dx) with tile i's pixel (y, x) = tile j's (y - dy, x - dx); 0 if unknown

    @classmethod
    def empty(cls) -> Links:
        return cls(np.zeros((0, 2), np.int64), np.zeros(0, "<U18"), np.zeros(0), np.zeros((0, 2), np.int64))

    def __len__(self) -> int:
        return len(self.pairs)

    def concat(self, other: Links) -> Links:
        return Links(
            np.concatenate([self.pairs, other.pairs]),
            np.concatenate([self.evidence, other.evidence]),
            np.concatenate([self.strength, other.strength]),
            np.concatenate([self.offset, other.offset]),
        )


_OFFSET_BIAS = 1 << 10  # offsets (|d| < 1024) as non-negative 11-bit fields


def exact_links(descriptors: Sequence[TileDescriptor], params: AoiParams = AoiParams()) -> Links:
    """Pairs of tiles sharing at least ``min_key_votes`` elevation keys at one and the same offset.

    All keys are sorted once; every key held by 2..``max_tiles_per_key`` tiles gives one vote per
    pair of its holders for their offset, and the votes are counted with one ``np.unique`` over
    (tile, tile, dy, dx) codes: no per-pair loop. Different places almost never share a key, and
    never several at one offset.
    """
    counts = np.array([len(d.keys) for d in descriptors], dtype=np.int64)
    if counts.sum() == 0:
        return Links.empty()
    keys = np.concatenate([d.keys for d in descriptors])
    yx = np.concatenate([d.key_yx for d in descriptors]).astype(np.int64)
    tile = np.repeat(np.arange(len(descriptors), dtype=np.int64), counts)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    sizes = np.diff(np.append(starts, len(keys)))
    codes = []
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= params.max_tiles_per_key)]):
        iu, ju = np.triu_indices(int(size), 1)
        run = starts[sizes == size][:, None]
        a, b = order[run + iu].ravel(), order[run + ju].ravel()
        ta, tb = tile[a], tile[b]
        d = yx[a] - yx[b]
        swap = ta > tb
        ta, tb = np.where(swap, tb, ta), np.where(swap, ta, tb)
        d = np.where(swap[:, None], -d, d) + _OFFSET_BIAS
        codes.append((((ta << 20) | tb) << 22) | (d[:, 0] << 11) | d[:, 1])
    if not codes:
        return Links.empty()
    code, votes = np.unique(np.concatenate(codes), return_counts=True)
    strong = votes >= params.min_key_votes
    code, votes = code[strong], votes[strong]
    if len(code) == 0:
        return Links.empty()
    pair = code >> 22
    # one link per pair: its best-supported offset
    best = np.lexsort((-votes, pair))
    pair, code, votes = pair[best], code[best], votes[best]
    first = np.concatenate([[True], pair[1:] != pair[:-1]])
    pair, code, votes = pair[first], code[first], votes[first]
    pairs = np.stack([pair >> 20, pair & ((1 << 20) - 1)], axis=1)
    offset = np.stack([(code >> 11) & 0x7FF, code & 0x7FF], axis=1) - _OFFSET_BIAS
    return Links(pairs, np.full(len(pairs), "exact-dem"), votes.astype(np.float64), offset)


def describe_tile(path: str | Path, params: AoiParams = AoiParams()) -> TileDescriptor:
    """Read the DEM band of a satellite tile and describe it."""
    return describe_dem(read_tile(path, bands=("DEM",))[0], params)


# ---- candidate search -------------------------------------------------------------------------
def candidate_pairs(vectors: np.ndarray, n_neighbors: int = 10, dims: int = 32) -> np.ndarray:
    """Unique pairs (i < j) where j is among i's nearest neighbours (or i among j's): (P, 2) int64.

    Vectors are reduced to ``dims`` PCA components first; the search is sklearn's chunked brute
    force, which never holds an N x N matrix and, unlike a KD-tree in 32 dimensions, keeps a
    predictable cost (about a minute for 100,000 tiles on 2 cores).
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    n = len(vectors)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    x = np.asarray(vectors, dtype=np.float32)
    if n > dims and x.shape[1] > dims:
        x = PCA(n_components=dims, random_state=0, svd_solver="randomized").fit_transform(x)
    k = min(n_neighbors + 1, n)
    _, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x)
    rows = np.repeat(np.arange(n), k)
    cols = idx.reshape(-1)
    keep = rows != cols
    a, b = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    return np.unique(np.stack([a, b], axis=1), axis=0).astype(np.int64)


# ---- verification -----------------------------------------------------------------------------
def _sliding_sums(x: np.ndarray, m: int, axis: int) -> np.ndarray:
    """Sums (float64) of every length-``m`` run along ``axis``: the total minus what each run leaves out.

    Only the few border slices that some run leaves out are cumulated, so the cost is about one
    pass over ``x`` however many runs there are.
    """
    n = x.shape[axis]
    k = n - m  # runs start at offsets 0..k
    total = x.sum(axis=axis, dtype=np.float64, keepdims=True)
    shape = list(x.shape)
    shape[axis] = 1
    zero = np.zeros(shape, dtype=np.float64)
    head = np.cumsum(np.take(x, np.arange(k), axis=axis), axis=axis, dtype=np.float64)
    tail = np.cumsum(np.flip(np.take(x, np.arange(m, n), axis=axis), axis), axis=axis, dtype=np.float64)
    left_out_before = np.concatenate([zero, head], axis=axis)  # offset o leaves out the first o
    left_out_after = np.flip(np.concatenate([zero, tail], axis=axis), axis)  # ... and the last k - o
    return total - left_out_before - left_out_after


def _window_sums(x: np.ndarray, m_h: int, m_w: int) -> np.ndarray:
    """Sums of every m_h x m_w window of a (P, H, W) stack: (P, H-m_h+1, W-m_w+1), float64."""
    return _sliding_sums(_sliding_sums(x, m_w, axis=2), m_h, axis=1)


def _template_correlation(a: np.ndarray, b: np.ndarray, s: int) -> np.ndarray:
    """Max over shifts of the Pearson correlation of b's centre (cropped by s) with a's windows."""
    h, w = b.shape[-2:]
    tpl = b[:, s : h - s, s : w - s].astype(np.float64)
    tpl -= tpl.mean(axis=(1, 2), keepdims=True)
    norm = np.sqrt((tpl * tpl).sum(axis=(1, 2)))
    tpl = (tpl / np.maximum(norm, 1e-12)[:, None, None]).astype(np.float32)
    m_h, m_w = tpl.shape[-2:]
    # the template has zero mean, so a window's own mean drops out of the numerator
    num = np.empty((len(a), h - m_h + 1, w - m_w + 1), dtype=np.float64)
    for y in range(num.shape[1]):
        for x in range(num.shape[2]):
            num[:, y, x] = np.einsum("pij,pij->p", a[:, y : y + m_h, x : x + m_w], tpl)
    sa, saa = _window_sums(a, m_h, m_w), _window_sums(a * a, m_h, m_w)
    var = np.maximum(saa - sa * sa / (m_h * m_w), 0.0)
    ok = (var > 1e-12) & (norm > 1e-12)[:, None, None]
    r = np.where(ok, num / np.sqrt(np.where(ok, var, 1.0)), 0.0)
    return r.reshape(len(a), -1).max(axis=1)


def shifted_correlation(a: np.ndarray, b: np.ndarray, max_shift: int) -> np.ndarray:
    """Shift-tolerant similarity of ``a[p]`` and ``b[p]``: max Pearson correlation over shifts <= max_shift.

    ``a`` and ``b`` are (P, H, W) stacks (or single 2-D images). The centre of one image
    (cropped by ``max_shift`` on every side, so every shift compares the same number of pixels)
    is correlated with each window of the other that it can slide to, in both directions, and
    the best correlation is kept; the score is symmetric. A constant image scores 0.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    single = a.ndim == 2
    if single:
        a, b = a[None], b[None]
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    # centring each image first keeps the float32 sums well conditioned
    a = a - a.mean(axis=(1, 2), keepdims=True)
    b = b - b.mean(axis=(1, 2), keepdims=True)
    best = np.maximum(_template_correlation(a, b, max_shift), _template_correlation(b, a, max_shift))
    best = np.clip(best, -1.0, 1.0).astype(np.float32)
    return best[0] if single else best


def verify_pairs(
    thumbs: np.ndarray, pairs: np.ndarray, max_shift_steps: int, batch: int = 1024, workers: int = 1
) -> np.ndarray:
    """:func:`shifted_correlation` of every candidate pair (P,) float32, in batches over ``workers`` threads.

    numpy releases the GIL in the heavy parts, so threads share ``thumbs`` without copying it.
    """
    from concurrent.futures import ThreadPoolExecutor

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    scores = np.empty(len(pairs), dtype=np.float32)

    def run(start: int) -> None:
        chunk = pairs[start : start + batch]
        scores[start : start + len(chunk)] = shifted_correlation(
            thumbs[chunk[:, 0]], thumbs[chunk[:, 1]], max_shift_steps
        )

    starts = range(0, len(pairs), batch)
    if workers <= 1 or len(pairs) <= batch:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, starts))
    return scores


# ---- grouping ---------------------------------------------------------------------------------
def connected_labels(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component label (0..C-1) of each of ``n`` nodes given (E, 2) edges (transitive)."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def dense_ids(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..G-1 in order of each label's first appearance (deterministic ids)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


@dataclass
class GroupingOutcome:
    """Result of :func:`group_descriptors` (one entry per tile, in input order)."""

    aoi_id: np.ndarray
    n_candidate_pairs: int
    n_linked_pairs: int
    timings: dict[str, float]
    #: every link found (exact-elevation and correlation), for the per-group evidence
    links: Links = field(default_factory=Links.empty)
    #: tiles with no usable terrain and no link: pooled (or alone) rather than placed
    unplaced: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def group_descriptors(
    descriptors: Sequence[TileDescriptor], params: AoiParams = AoiParams(), workers: int = 1
) -> GroupingOutcome:
    """Group tiles from their descriptors -> dense ``aoi_id`` per tile (see the module docstring).

    Exact-elevation links come first; the correlation verifies only candidate pairs they have
    not already put in one group. Tiles left with no usable terrain and no link are unplaced.
    """
    n = len(descriptors)
    timings: dict[str, float] = {"exact": 0.0, "search": 0.0, "verify": 0.0, "components": 0.0}
    if n == 0:
        return GroupingOutcome(np.zeros(0, dtype=np.int64), 0, 0, timings)
    if n >= 1 << 20:
        raise ValueError(f"at most {1 << 20} tiles can be grouped at once, got {n}")
    t0 = time.perf_counter()
    exact = exact_links(descriptors, params)
    settled = connected_labels(n, exact.pairs)
    timings["exact"] = time.perf_counter() - t0

    idx = np.array([i for i, d in enumerate(descriptors) if d.usable], dtype=np.int64)
    t0 = time.perf_counter()
    pairs = np.zeros((0, 2), dtype=np.int64)
    if len(idx) >= 2:
        vectors = np.stack([descriptors[i].coarse for i in idx])
        pairs = candidate_pairs(vectors, params.n_neighbors, params.search_dims)
        coarse = np.einsum("pd,pd->p", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
        pairs = pairs[coarse >= params.min_search_similarity]
        pairs = pairs[settled[idx[pairs[:, 0]]] != settled[idx[pairs[:, 1]]]]
    timings["search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    details = np.stack([descriptors[i].detail for i in idx]) if len(idx) else np.zeros((0, 1, 1))
    steps = math.ceil(params.max_shift / params.block)
    scores = verify_pairs(details, pairs, steps, params.batch_pairs, workers)
    timings["verify"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ok = scores >= params.threshold
    correlated = Links(
        idx[pairs[ok]],
        np.full(int(ok.sum()), "detail-correlation"),
        scores[ok].astype(np.float64),
        np.zeros((int(ok.sum()), 2), np.int64),
    )
    links = exact.concat(correlated)
    labels = connected_labels(n, links.pairs)
    usable = np.array([d.usable for d in descriptors], dtype=bool)
    linked = np.zeros(n, bool)
    linked[links.pairs.ravel()] = True
    unplaced = ~usable & ~linked
    if params.pool_unplaced and unplaced.any():
        labels = labels.copy()
        labels[unplaced] = labels[np.flatnonzero(unplaced)[0]]
    timings["components"] = time.perf_counter() - t0
    return GroupingOutcome(dense_ids(labels), len(pairs), len(links), timings, links, unplaced)


def group_dems(dems: Sequence[np.ndarray] | np.ndarray, params: AoiParams = AoiParams()) -> np.ndarray:
    """Dense ``aoi_id`` for a sequence of DEM arrays (convenience for arrays already in memory)."""
    return group_descriptors([describe_dem(d, params) for d in dems], params).aoi_id


def group_evidence(
    aoi_id: np.ndarray, links: Links, unplaced: np.ndarray, tile_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """Per group (aoi_id order): which evidence joined it and the links that hold it together.

    ``links`` lists a spanning tree of the group (n - 1 links for n tiles), preferring exact
    elevation matches with many shared keys, then the highest correlations: enough to retrace
    every merge. ``joined_by`` counts the tree's links per kind of evidence; the pooled tiles
    without terrain say so instead.
    """
    from scipy.sparse.csgraph import minimum_spanning_tree

    n = len(aoi_id)
    n_groups = int(aoi_id.max()) + 1 if n else 0
    out: list[dict[str, Any]] = [
        {"aoi_id": g, "n_tiles": 0, "joined_by": {}, "links": []} for g in range(n_groups)
    ]
    for g, size in enumerate(np.bincount(aoi_id, minlength=n_groups)):
        out[g]["n_tiles"] = int(size)
    if unplaced.any() and len(set(aoi_id[unplaced].tolist())) == 1 and unplaced.sum() > 1:
        out[int(aoi_id[unplaced][0])]["joined_by"] = {UNPLACED: int(unplaced.sum())}
    if len(links):
        exact = links.evidence == "exact-dem"
        # smaller weight = better link; exact matches before any correlation
        weight = np.where(exact, 1.0 / (1.0 + links.strength), 2.0 - links.strength)
        order = np.lexsort((weight, links.pairs[:, 1], links.pairs[:, 0]))
        pairs = links.pairs[order]
        first = np.concatenate([[True], (pairs[1:] != pairs[:-1]).any(axis=1)])
        keep = order[first]
        graph = coo_matrix((weight[keep], (links.pairs[keep, 0], links.pairs[keep, 1])), shape=(n, n))
        tree = minimum_spanning_tree(graph.tocsr()).tocoo()
        lookup = {(int(a), int(b)): int(k) for k, (a, b) in zip(keep, links.pairs[keep], strict=True)}
        for a, b in zip(tree.row, tree.col, strict=True):
            k = lookup[(min(int(a), int(b)), max(int(a), int(b)))]
            i, j = links.pairs[k]
            kind = str(links.evidence[k])
            link: dict[str, Any] = {"tiles": [tile_ids[i], tile_ids[j]], "evidence": kind}
            if kind == "exact-dem":
                link["shared_keys"] = int(links.strength[k])
                link["offset_yx"] = [int(v) for v in links.offset[k]]
            else:
                link["correlation"] = round(float(links.strength[k]), 4)
            group = out[int(aoi_id[i])]
            group["links"].append(link)
            group["joined_by"][kind] = group["joined_by"].get(kind, 0) + 1
    for group in out:
        if group["n_tiles"] == 1:
            group["joined_by"] = {"single tile": 1}
    return out


def _size_histogram(aoi_id: np.ndarray) -> dict[int, int]:
    sizes = np.bincount(aoi_id) if len(aoi_id) else np.zeros(0, dtype=np.int64)
    return dict(sorted(Counter(int(s) for s in sizes).items()))


def _describe_job(args: tuple[str, AoiParams]) -> TileDescriptor:
    return describe_tile(args[0], args[1])


def group_aois(
    layout: DataLayout,
    threshold: float | None = None,
    workers: int = 2,
    progress: bool = True,
    params: AoiParams | None = None,
) -> AoiResult:
    """Group every tile of the catalog (train and test) by place and write the AOI outputs.

    Writes (atomically, under ``layout.aoi_dir``): the AOI table ``layout.aoi_table``
    (tile_id, split, aoi_id, usable), the groups JSON ``layout.aoi_groups_json``
    ({"method", "threshold", "params", "n_groups", "groups": [[tile ids], ...]}, groups in
    ``aoi_id`` order) and ``aoi_report.json`` (group counts, size histogram, timings).
    """
    params = params or AoiParams()
    if threshold is not None:
        if not -1.0 <= threshold <= 1.0:
            raise KelpsegError(f"AOI similarity threshold must be in [-1, 1], got {threshold}")
        params = replace(params, threshold=float(threshold))
    catalog = load_catalog(layout)
    t0 = time.perf_counter()
    descriptors = pmap(
        _describe_job,
        [(p, params) for p in catalog["image_path"]],
        workers=workers,
        progress=progress,
        desc="DEM descriptors",
        chunksize=16,
    )
    t_describe = time.perf_counter() - t0
    usable = np.array([d.usable for d in descriptors], dtype=bool)
    outcome = group_descriptors(descriptors, params, workers)
    table = pd.DataFrame(
        {
            "tile_id": catalog["tile_id"].to_numpy(),
            "split": catalog["split"].to_numpy(),
            "aoi_id": outcome.aoi_id.astype(np.int64),
            "usable": usable,
        }
    )
    groups = [list(ids) for _, ids in table.groupby("aoi_id", sort=True)["tile_id"]]
    hist = _size_histogram(outcome.aoi_id)
    tile_ids = table["tile_id"].tolist()
    evidence = group_evidence(outcome.aoi_id, outcome.links, outcome.unplaced, tile_ids)
    unplaced_ids = sorted(set(outcome.aoi_id[outcome.unplaced].tolist()))
    result = AoiResult(
        table=table,
        groups=groups,
        threshold=params.threshold,
        params=params,
        n_groups=len(groups),
        n_unusable=int((~usable).sum()),
        size_histogram=hist,
        timings={"describe": t_describe, **outcome.timings},
        n_candidate_pairs=outcome.n_candidate_pairs,
        n_linked_pairs=outcome.n_linked_pairs,
        evidence=evidence,
        n_unplaced=int(outcome.unplaced.sum()),
        unplaced_aoi_id=unplaced_ids[0] if params.pool_unplaced and unplaced_ids else None,
    )
    write_aoi_outputs(layout, result)
    return result


def write_aoi_outputs(layout: DataLayout, result: AoiResult) -> None:
    """Write table, groups JSON and report (each atomically)."""
    write_parquet(layout.aoi_table, result.table.loc[:, list(AOI_COLUMNS)])
    write_json(
        layout.aoi_groups_json,
        {
            "method": METHOD,
            "threshold": result.threshold,
            "params": asdict(result.params),
            "n_groups": result.n_groups,
            "unplaced_aoi_id": result.unplaced_aoi_id,
            "groups": result.groups,
            "group_evidence": result.evidence,
        },
    )
    write_json(layout.aoi_report, result.report())


def load_aoi_table(layout: DataLayout) -> pd.DataFrame:
    """Read the AOI table written by :func:`group_aois`."""
    if not layout.aoi_table.exists():
        raise StageNotRunError.missing(layout.aoi_table, "aoi-grouping", "aoi-grouping", what="AOI table")
    return pd.read_parquet(layout.aoi_table)


# ---- evaluation against synthetic truth -------------------------------------------------------
def pair_scores(true: Sequence[Any], pred: Sequence[Any]) -> dict[str, float]:
    """Pair-counting precision/recall of a clustering (pairs put together that truly belong together)."""
    ct = pd.crosstab(pd.Series(list(true), name="t"), pd.Series(list(pred), name="p")).to_numpy()
    both = float((ct * (ct - 1) / 2).sum())
    pred_pairs = float((ct.sum(axis=0) * (ct.sum(axis=0) - 1) / 2).sum())
    true_pairs = float((ct.sum(axis=1) * (ct.sum(axis=1) - 1) / 2).sum())
    return {
        "pair_precision": both / pred_pairs if pred_pairs else 1.0,
        "pair_recall": both / true_pairs if true_pairs else 1.0,
    }


def aoi_agreement(layout: DataLayout) -> dict[str, Any]:
    """Compare the AOI table with ``truth/aoi_membership.csv`` (synthetic data; evaluation only).

    Returns the adjusted Rand index, pair precision/recall and the number of groups found vs true.
    """
    from sklearn.metrics import adjusted_rand_score

    truth_path = layout.truth_aoi_table
    if not truth_path.exists():
        raise KelpsegError(f"{truth_path}: no AOI ground truth (it exists only for synthetic data)")
    truth = pd.read_csv(truth_path, dtype={"tile_id": str})
    if not {"tile_id", "aoi"} <= set(truth.columns):
        raise KelpsegError(f"{truth_path}: expected columns tile_id and aoi")
    table = load_aoi_table(layout)
    merged = table.merge(truth[["tile_id", "aoi"]], on="tile_id", how="inner")
    if merged.empty:
        raise KelpsegError(f"{truth_path}: no tile id in common with {layout.aoi_table}")
    return {
        "n_tiles": len(merged),
        "ari": float(adjusted_rand_score(merged["aoi"], merged["aoi_id"])),
        **pair_scores(merged["aoi"], merged["aoi_id"]),
        "n_groups_found": int(merged["aoi_id"].nunique()),
        "n_groups_true": int(merged["aoi"].nunique()),
    }
