"""AOI grouping: find tiles (train and test) that show the same place at different dates.

Cross-validation folds must keep every view of one place on the same side, otherwise the model
is scored on terrain it has already seen. The GeoTIFFs carry no coordinates, so the place is
recognised from the pixels. The spectral bands change with the date (clouds, sun, tide); the
elevation band (DEM) does not, apart from a shift of a few pixels between acquisitions. So the
grouping works on the DEM only, with no pretrained network:

1. **Descriptor** per tile, from the relief ``log1p(max(DEM, 0))`` (water, sea level and nodata
   -> 0; the log keeps low coastal land visible next to mountains), block-averaged by ``block``
   px (350 -> 70 x 70 with the default 5):

   * a *coarse vector*: the thumbnail averaged to ``search_grid`` x ``search_grid`` cells,
     mean-removed and L2-normalised. Cells of 25 px barely change under a shift of a few px;
   * a *detail thumbnail*: the difference of two Gaussian blurs of the thumbnail
     (``detail_sigmas``, in blocks), i.e. the terrain texture and coastline shape without the
     "land on this side" trend. Two different coasts with land in the same corner correlate
     highly on the relief itself but not on its detail.

   A tile is *usable* when at least ``min_land_fraction`` of its pixels are land (DEM > 0) and
   its detail is not constant. Unusable tiles (open water, all nodata) have nothing to
   recognise; each becomes its own group instead of all of them being glued together.
2. **Candidates**: the coarse vectors are reduced by PCA and each tile's ``n_neighbors``
   nearest neighbours are found by a chunked brute-force search (no N x N matrix is kept);
   pairs whose coarse cosine similarity is below ``min_search_similarity`` are dropped.
3. **Verification**: a candidate pair's score is the best Pearson correlation of the two
   detail thumbnails over all shifts up to ``max_shift`` px, rounded up to whole blocks
   (see :func:`shifted_correlation`).
4. **Groups**: pairs scoring at least ``threshold`` are edges; the groups are the connected
   components of that graph (a full transitive closure, as union-find gives), with no size cap
   that would split a large group back into leaking singletons.

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

METHOD = "dem-detail-shift-correlation"
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


@dataclass(frozen=True)
class TileDescriptor:
    """What the grouping needs from one tile."""

    coarse: np.ndarray  # (search_grid**2,) float32, mean-removed, unit norm (zeros if constant)
    detail: np.ndarray  # (S, S) float32 band-passed block-mean relief
    land_fraction: float
    usable: bool


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
            "n_candidate_pairs": self.n_candidate_pairs,
            "n_linked_pairs": self.n_linked_pairs,
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
    return TileDescriptor(coarse=coarse, detail=band, land_fraction=frac, usable=bool(usable))


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


def group_descriptors(
    descriptors: Sequence[TileDescriptor], params: AoiParams = AoiParams(), workers: int = 1
) -> GroupingOutcome:
    """Group tiles from their descriptors -> dense ``aoi_id`` per tile (see the module docstring).

    Unusable tiles never take part in the search and each becomes its own group.
    """
    n = len(descriptors)
    timings: dict[str, float] = {"search": 0.0, "verify": 0.0, "components": 0.0}
    if n == 0:
        return GroupingOutcome(np.zeros(0, dtype=np.int64), 0, 0, timings)
    idx = np.array([i for i, d in enumerate(descriptors) if d.usable], dtype=np.int64)
    t0 = time.perf_counter()
    pairs = np.zeros((0, 2), dtype=np.int64)
    if len(idx) >= 2:
        vectors = np.stack([descriptors[i].coarse for i in idx])
        pairs = candidate_pairs(vectors, params.n_neighbors, params.search_dims)
        coarse = np.einsum("pd,pd->p", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
        pairs = pairs[coarse >= params.min_search_similarity]
    timings["search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    details = np.stack([descriptors[i].detail for i in idx]) if len(idx) else np.zeros((0, 1, 1))
    steps = math.ceil(params.max_shift / params.block)
    scores = verify_pairs(details, pairs, steps, params.batch_pairs, workers)
    timings["verify"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    linked = idx[pairs[scores >= params.threshold]]
    labels = connected_labels(n, linked)
    timings["components"] = time.perf_counter() - t0
    return GroupingOutcome(dense_ids(labels), len(pairs), len(linked), timings)


def group_dems(dems: Sequence[np.ndarray] | np.ndarray, params: AoiParams = AoiParams()) -> np.ndarray:
    """Dense ``aoi_id`` for a sequence of DEM arrays (convenience for arrays already in memory)."""
    return group_descriptors([describe_dem(d, params) for d in dems], params).aoi_id


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
            "groups": result.groups,
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
