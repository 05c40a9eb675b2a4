"""Per-channel normalisation statistics over the training tiles, streamed with bounded memory.

Channels: the 7 bands (SWIR, NIR, R, G, B, QA, DEM), then the spectral indices (every registered
one by default) in registry order. Only **training** tiles are read (the reference also read the
test tiles, which makes the statistics transductive).

Pixels
    Band pixels equal to the fill value -32768 become ``fill_value``. Indices are computed on those
    bands and, per the options, masked where QA != 0 and/or on land (the water mask of
    :mod:`kelpseg.features.indices`; indices with ``maskable=False`` are never masked). With
    ``fill_value="nan"`` missing and masked pixels are **excluded**; with ``fill_value="0"`` they
    count as 0, as the models trained with that option see them. Non-finite values never count.

Statistics per channel
    ``count`` (pixels that count), exact ``min``/``max``, ``mean`` and population ``std``
    (ddof=0) over those pixels only (the reference divided by all pixels, NaN included), and the
    quantiles ``q01 q05 q25 q50 q75 q95 q99`` as numpy's default ``np.quantile`` (method
    ``linear``) would give over all counted pixels together (the reference averaged per-image
    quantiles).

Streaming, mergeable state (memory does not grow with the number of tiles)
    * mean/std: per channel (count, mean, M2) in float64; each batch of tiles gets an exact
      two-pass (mean, M2) and is merged with Chan et al.'s parallel formula
      ``M2 = M2a + M2b + d**2 * na * nb / n`` (``d = mean_b - mean_a``), so no sum of squares is
      ever subtracted (no cancellation).
    * min/max: running extremes.
    * quantiles: a histogram per channel; histograms of two states add.

      - Bands: an exact integer histogram over [-32768, 65535] (raw DN are int16/uint16), one bin
        per integer: quantiles are **exact** for integer data (a non-integer value would be
        rounded, error <= 0.5).
      - Indices: a log-linear histogram over every finite float32: the bin of ``x`` is the top 18
        bits of its order-preserving float32 bit pattern (sign, 8 exponent bits, 9 mantissa
        bits; 2**18 bins). A bin spans less than ``2**-9 * |x|`` for normal floats and an absolute
        2**-135 below 1.2e-38. An order statistic is estimated by its bin's midpoint (exactly 0 for
        the two bins touching zero), clamped to the exact [min, max]. numpy's linear quantile
        interpolates between two order statistics ``x_lo <= x_hi``; estimating both this way gives
        ``|q_est - q| <= 2**-10 * max(|x_lo|, |x_hi|) + 2**-135``. For dense data (both in one bin)
        that is a relative error of at most ``2**-10`` ~ 0.098% of ``|q|``.
        ``options.quantile_max_error`` records ``2**-10``.

Binary channels
    QA and the indices registered ``binary`` (DEMWM, NDVIWM, NDWIWM, WATERMASK, VALIDMASK) are
    marked ``"binary": true`` and get min 0, max 1, q01 0, q99 1, mean 0, std 1 as in the
    reference, so every normalisation (min-max, quantile, z-score) passes them through unchanged.
    Their count is the measured one and their other quantiles are the measured ones clipped into
    [0, 1] (DEMWM is clipped elevation, not 0/1).

A channel without a single counted pixel (e.g. every pixel masked) is an error naming it: the
statistics file never holds NaN or Inf (the reference's had to be fixed by hand).

Parallelism: each worker process accumulates its own state over an interleaved share of the
tiles; the states are merged at the end. Counts, extremes and histograms (hence quantiles) do not
depend on the order of merging; means and stds are rounded to 12 significant digits so that, in
practice, neither does the file. The JSON is written atomically with sorted keys and no
timestamp: the same tiles and options give the same bytes.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import queue as queue_mod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from kelpseg.bands import BANDS, FILL_VALUE, band_positions
from kelpseg.errors import KelpsegError, StageNotRunError, run_hint
from kelpseg.features.indices import (
    CPU_BLOCK_PIXELS,
    INDEX_REGISTRY,
    compute_indices,
    cpu_blocks,
    get_index,
    keep_mask,
    validate_index_names,
)
from kelpseg.io.atomic import write_text
from kelpseg.io.catalog import train_catalog
from kelpseg.io.tiles import raw_to_float, read_raw_tile
from kelpseg.layout import FILL_VALUE_NAMES, DataLayout
from kelpseg.memory import keep_freed_memory
from kelpseg.parallel import process_context
from kelpseg.progress import bar as progress_bar

log = logging.getLogger(__name__)

FILL_VALUES: dict[str, float] = dict(zip(FILL_VALUE_NAMES, (math.nan, 0.0), strict=True))
QUANTILES: dict[str, float] = {
    "q01": 0.01,
    "q05": 0.05,
    "q25": 0.25,
    "q50": 0.50,
    "q75": 0.75,
    "q95": 0.95,
    "q99": 0.99,
}
STAT_KEYS: tuple[str, ...] = ("count", "min", "max", "mean", "std", *QUANTILES, "binary")
BINARY_FORCED: dict[str, float] = {"min": 0.0, "max": 1.0, "q01": 0.0, "q99": 1.0, "mean": 0.0, "std": 1.0}

# Integer histogram for the bands: one bin per value in [INT_LOW, INT_HIGH].
INT_LOW, INT_HIGH = -32768, 65535
INT_BINS = INT_HIGH - INT_LOW + 1
# Float histogram for the indices: top FLOAT_KEY_BITS bits of the order-preserving float32 pattern.
FLOAT_KEY_BITS = 18
FLOAT_SHIFT = 32 - FLOAT_KEY_BITS
FLOAT_BINS = 1 << FLOAT_KEY_BITS
MANTISSA_BITS = 23 - FLOAT_SHIFT  # 9
QUANTILE_MAX_ERROR = 2.0 ** -(MANTISSA_BITS + 1)  # relative, see the module docstring
QUANTILE_METHOD = (
    "np.quantile 'linear' over all counted pixels; bands: exact integer histogram over [-32768, 65535]; "
    f"indices: float32 log-linear histogram ({FLOAT_BINS} bins: sign, exponent and {MANTISSA_BITS} "
    "mantissa bits), bin midpoints clamped to [min, max]; error <= quantile_max_error * max(|x_lo|, |x_hi|) "
    "for the two order statistics interpolated"
)
SIGNIFICANT_DIGITS = 12
DEFAULT_BATCH = 8
INDEX_CHUNK = 8  # indices computed at once (bounds the batch's memory)


# --------------------------------------------------------------------------------------------------
# Histogram keys
# --------------------------------------------------------------------------------------------------
_SIGN = np.uint32(0x80000000)


def float_keys(values: np.ndarray) -> np.ndarray:
    """Histogram bin of each finite float32 value, monotone in the value (0 .. FLOAT_BINS-1).

    The float32 bit pattern read as int32, with the magnitude bits of negative numbers flipped,
    orders like the floats; flipping the sign bit makes it unsigned. Branch-free (no np.where).
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32)
    key = bits >> 31
    key &= 0x7FFFFFFF
    key ^= bits
    ordered = key.view(np.uint32)
    ordered ^= _SIGN
    ordered >>= np.uint32(FLOAT_SHIFT)
    return ordered.astype(np.intp)


def _raw_bin_order() -> np.ndarray:
    """``order[r]``: the float-histogram bin of the values whose float32 bit pattern has top bits ``r``.

    Counting pixels by their raw top bits (one shift) and moving the counts to their bins once per
    histogram gives exactly the histogram of :func:`float_keys`, without its per-pixel passes:
    positive patterns map to ``r + 2**17``, negative ones (sign bit set) to ``2**18 - 1 - r``.
    """
    raw = np.arange(FLOAT_BINS, dtype=np.int64)
    half = FLOAT_BINS // 2
    return np.where(raw < half, raw + half, FLOAT_BINS - 1 - raw)


_RAW_BIN_ORDER = _raw_bin_order()


def raw_float_counts(values: np.ndarray) -> np.ndarray:
    """Counts of finite float32 ``values`` per top-bits pattern, in raw order (see _raw_bin_order)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return np.bincount(bits >> np.uint32(FLOAT_SHIFT), minlength=FLOAT_BINS)


def ordered_float_counts(raw_counts: np.ndarray) -> np.ndarray:
    """Raw-order counts moved to the float-histogram bins (the order of the values)."""
    out = np.empty_like(raw_counts)
    out[_RAW_BIN_ORDER] = raw_counts
    return out


def float_histogram(values: np.ndarray) -> np.ndarray:
    """Counts per float-histogram bin (FLOAT_BINS) of finite float32 ``values``; equals
    ``np.bincount(float_keys(values), minlength=FLOAT_BINS)``."""
    return ordered_float_counts(raw_float_counts(values))


def _ordered_to_float(ordered: np.ndarray) -> np.ndarray:
    ordered = ordered.astype(np.uint32)
    u = np.where(ordered >= _SIGN, ordered & ~_SIGN, ~ordered)
    return u.view(np.float32).astype(np.float64)


def float_bin_bounds(bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest float32 value of each float-histogram bin."""
    bins = np.asarray(bins, dtype=np.uint64)
    first = bins << np.uint64(FLOAT_SHIFT)
    last = first + np.uint64((1 << FLOAT_SHIFT) - 1)
    return _ordered_to_float(first), _ordered_to_float(last)


def _finite_values(values: np.ndarray) -> np.ndarray:
    """The finite entries of ``values`` (any shape, any strides) as one contiguous 1-D array."""
    return values[np.isfinite(values)]


def _moments(vals: np.ndarray) -> tuple[int, float, float]:
    """Exact two-pass (count, mean, M2), accumulated in float64."""
    n = int(vals.size)
    mean = float(np.add.reduce(vals, dtype=np.float64)) / n
    # the same values as np.subtract(vals, mean, dtype=float64), without the ufunc's buffered cast
    dev = vals.astype(np.float64)
    dev -= mean
    return n, mean, float(np.dot(dev, dev))


def _moments_from_counts(counts: np.ndarray) -> tuple[int, float, float]:
    """(count, mean, M2) of the values described by an integer histogram."""
    nz = np.flatnonzero(counts)
    weights = counts[nz].astype(np.float64)
    values = (nz + INT_LOW).astype(np.float64)
    n = int(counts[nz].sum())
    mean = float(weights @ values) / n
    dev = values - mean
    return n, mean, float(weights @ (dev * dev))


def _integer_counts(vals: np.ndarray, vmin: float, vmax: float) -> tuple[np.ndarray, int, bool]:
    """Integer histogram of ``vals``; also the number clipped into the end bins and whether every
    value was an integer inside the histogram's range (then the histogram is exact)."""
    rounded = np.rint(vals)
    integral = bool(np.array_equal(rounded, vals))
    outside = 0
    if vmin < INT_LOW or vmax > INT_HIGH:
        outside = int(np.count_nonzero((rounded < INT_LOW) | (rounded > INT_HIGH)))
        np.clip(rounded, INT_LOW, INT_HIGH, out=rounded)
    keys = rounded.astype(np.intp)
    keys -= INT_LOW
    return np.bincount(keys, minlength=INT_BINS), outside, integral and outside == 0


# --------------------------------------------------------------------------------------------------
# Streaming state
# --------------------------------------------------------------------------------------------------
@dataclass
class StatsState:
    """Mergeable running statistics of some channels (see the module docstring).

    ``integer[c]`` selects the exact integer histogram (bands) instead of the float one. Float
    histograms are kept in raw bit-pattern order (one shift per pixel to count) and put in value
    order by :meth:`histogram`.
    """

    names: tuple[str, ...]
    integer: tuple[bool, ...]
    n_tiles: int = 0
    count: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    vmin: np.ndarray = field(init=False)
    vmax: np.ndarray = field(init=False)
    hist: list[np.ndarray] = field(init=False)
    out_of_range: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.names)
        self.count = np.zeros(n, np.int64)
        self.mean = np.zeros(n, np.float64)
        self.m2 = np.zeros(n, np.float64)
        self.vmin = np.full(n, np.inf)
        self.vmax = np.full(n, -np.inf)
        self.out_of_range = np.zeros(n, np.int64)
        self.hist = [np.zeros(INT_BINS if i else FLOAT_BINS, np.int64) for i in self.integer]

    def _merge_moments(self, c: int, n_b: int, mean_b: float, m2_b: float) -> None:
        n_a = int(self.count[c])
        n = n_a + n_b
        delta = mean_b - self.mean[c]
        self.mean[c] += delta * (n_b / n)
        self.m2[c] += m2_b + delta * delta * (n_a * n_b / n)
        self.count[c] = n

    def update_channel(self, c: int, values: np.ndarray) -> None:
        """Add the pixels of channel ``c`` (any shape, float32); non-finite ones are skipped."""
        self.update_values(c, _finite_values(values))

    def update_values(self, c: int, vals: np.ndarray) -> None:
        """Add the pixels ``vals`` of channel ``c`` (1-D float32, every value finite)."""
        if vals.size == 0:
            return
        vmin, vmax = float(vals.min()), float(vals.max())
        if self.integer[c]:
            counts, outside, exact = _integer_counts(vals, vmin, vmax)
            self.hist[c] += counts
            self.out_of_range[c] += outside
            # integral values in range: the batch histogram holds them exactly, and its moments
            # cost O(bins) instead of O(pixels)
            n_b, mean_b, m2_b = _moments_from_counts(counts) if exact else _moments(vals)
        else:
            self.hist[c] += raw_float_counts(vals)
            n_b, mean_b, m2_b = _moments(vals)
        self._merge_moments(c, n_b, mean_b, m2_b)
        self.vmin[c] = min(self.vmin[c], vmin)
        self.vmax[c] = max(self.vmax[c], vmax)

    def update_integer_counts(self, c: int, counts: np.ndarray) -> None:
        """Add the pixels of integer channel ``c`` given as their histogram (INT_BINS counts)."""
        nz = np.flatnonzero(counts)
        if nz.size == 0:
            return
        self.hist[c] += counts
        self._merge_moments(c, *_moments_from_counts(counts))
        self.vmin[c] = min(self.vmin[c], float(nz[0] + INT_LOW))
        self.vmax[c] = max(self.vmax[c], float(nz[-1] + INT_LOW))

    def merge(self, other: StatsState) -> StatsState:
        """Add ``other`` (same channels) into this state and return it."""
        if other.names != self.names or other.integer != self.integer:
            raise ValueError("cannot merge band-stats states over different channels")
        for c in range(len(self.names)):
            if other.count[c]:
                n_b = int(other.count[c])
                self._merge_moments(c, n_b, float(other.mean[c]), float(other.m2[c]))
                self.hist[c] += other.hist[c]
        self.vmin = np.minimum(self.vmin, other.vmin)
        self.vmax = np.maximum(self.vmax, other.vmax)
        self.out_of_range += other.out_of_range
        self.n_tiles += other.n_tiles
        return self

    # Compact form for sending between processes: histograms as (nonzero bins, counts).
    def to_payload(self) -> dict[str, Any]:
        payload = {k: getattr(self, k) for k in ("names", "integer", "n_tiles", "count", "mean", "m2")}
        payload |= {"vmin": self.vmin, "vmax": self.vmax, "out_of_range": self.out_of_range}
        nz = [np.flatnonzero(h) for h in self.hist]
        payload["hist"] = [(i.astype(np.int32), h[i]) for i, h in zip(nz, self.hist, strict=True)]
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> StatsState:
        state = cls(tuple(payload["names"]), tuple(payload["integer"]), payload["n_tiles"])
        for k in ("count", "mean", "m2", "vmin", "vmax", "out_of_range"):
            setattr(state, k, payload[k])
        for h, (idx, counts) in zip(state.hist, payload["hist"], strict=True):
            h[idx] = counts
        return state

    # ---- results ------------------------------------------------------------------------------
    def histogram(self, c: int) -> np.ndarray:
        """Counts per bin of channel ``c`` in the order of the values (integer or float bins)."""
        return self.hist[c] if self.integer[c] else ordered_float_counts(self.hist[c])

    def quantiles(self, c: int) -> dict[str, float]:
        """Estimated ``np.quantile(..., method='linear')`` of channel ``c`` at :data:`QUANTILES`."""
        n = int(self.count[c])
        cum = np.cumsum(self.histogram(c))
        probs = np.asarray(list(QUANTILES.values()))
        pos = (n - 1) * probs
        lo_rank = np.floor(pos).astype(np.int64)
        hi_rank = np.minimum(lo_rank + 1, n - 1)
        frac = pos - lo_rank
        lo_val = self._order_statistic(c, cum, lo_rank)
        hi_val = self._order_statistic(c, cum, hi_rank)
        values = lo_val + frac * (hi_val - lo_val)
        values = np.clip(values, self.vmin[c], self.vmax[c])
        return {k: float(v) for k, v in zip(QUANTILES, values, strict=True)}

    def _order_statistic(self, c: int, cum: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Estimate of the ``rank``-th smallest counted value (0-based) from the histogram."""
        bins = np.searchsorted(cum, rank + 1, side="left")
        if self.integer[c]:
            est = (bins + INT_LOW).astype(np.float64)
        else:
            lo, hi = float_bin_bounds(bins)
            # the two bins next to zero (magnitudes below 2**-135) report exactly 0
            est = np.where((lo == 0) | (hi == 0), 0.0, 0.5 * lo + 0.5 * hi)
        est = np.clip(est, self.vmin[c], self.vmax[c])
        n = int(self.count[c])
        est = np.where(rank == 0, self.vmin[c], est)
        return np.where(rank == n - 1, self.vmax[c], est)

    def channel_stats(self, c: int, binary: bool) -> dict[str, Any]:
        name = self.names[c]
        if self.count[c] == 0:
            raise KelpsegError(
                f"band stats: channel {name!r} has no finite pixel over the {self.n_tiles} training tile(s); "
                "check its formula or the masking options"
            )
        stats: dict[str, Any] = {
            "count": int(self.count[c]),
            "min": float(self.vmin[c]),
            "max": float(self.vmax[c]),
            "mean": _round(float(self.mean[c])),
            "std": _round(math.sqrt(max(float(self.m2[c]), 0.0) / int(self.count[c]))),
            **self.quantiles(c),
            "binary": binary,
        }
        if binary:
            for key in QUANTILES:  # keeps q01 <= q05 <= ... <= q99 once q01/q99 are forced
                stats[key] = min(max(stats[key], 0.0), 1.0)
            stats.update(BINARY_FORCED)
        bad = [k for k, v in stats.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise KelpsegError(f"band stats: channel {name!r} has non-finite {', '.join(bad)}")
        return {k: stats[k] for k in sorted(stats)}


def _round(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


# --------------------------------------------------------------------------------------------------
# Accumulating over tiles
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    paths: tuple[str, ...]
    indices: tuple[str, ...]
    fill_value: str
    mask_using_qa: bool
    mask_using_water_mask: bool
    batch_size: int = DEFAULT_BATCH


def channel_names(indices: Sequence[str]) -> tuple[str, ...]:
    return (*BANDS, *indices)


def new_state(indices: Sequence[str]) -> StatsState:
    return StatsState(channel_names(indices), (True,) * len(BANDS) + (False,) * len(indices))


def update_with_batch(state: StatsState, x: np.ndarray, job: _Job, raw: np.ndarray | None = None) -> None:
    """Add a batch of tiles ``x`` (N, 7, H, W) float32 (fill already applied) to ``state``.

    ``raw``: the same tiles as stored; when they are integers the band histograms are counted on
    them directly (no float pass), with the same result.
    """
    # 8- and 16-bit integers lie inside the integer histogram's range by construction
    if raw is not None and raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2 and raw.shape == x.shape:
        _update_bands_from_integers(state, raw, job.fill_value)
    else:
        for b in range(len(BANDS)):
            state.update_channel(b, x[:, b])
    if job.fill_value == "nan":  # one index at a time: memory does not grow with their number
        parts = _counted_index_values(x, job.indices, job.mask_using_qa, job.mask_using_water_mask)
        for j, values in parts:
            state.update_values(len(BANDS) + j, values)
        state.n_tiles += x.shape[0]
        return
    for start in range(0, len(job.indices), INDEX_CHUNK):
        names = job.indices[start : start + INDEX_CHUNK]
        idx = compute_indices(
            x,
            band_positions(BANDS),
            names,
            mask_using_qa=job.mask_using_qa,
            mask_using_water_mask=job.mask_using_water_mask,
            fill=FILL_VALUES[job.fill_value],
        )
        for j in range(len(names)):
            state.update_channel(len(BANDS) + start + j, idx[:, j])
    state.n_tiles += x.shape[0]


def _integer_band_counts(values: np.ndarray) -> np.ndarray:
    """INT_BINS counts of 8/16-bit integer ``values`` (bin of v: v - INT_LOW)."""
    counts = np.zeros(INT_BINS, np.int64)
    if values.dtype == np.int16:  # count the bit patterns as uint16, then put negatives first
        patterns = np.bincount(values.reshape(-1).view(np.uint16), minlength=1 << 16)
        counts[-INT_LOW : -INT_LOW + (1 << 15)] = patterns[: 1 << 15]
        counts[: 1 << 15] = patterns[1 << 15 :]
    elif values.dtype == np.uint16:
        counts[-INT_LOW:] = np.bincount(values.reshape(-1), minlength=1 << 16)
    else:
        keys = values.astype(np.intp).reshape(-1)
        keys -= INT_LOW
        counts += np.bincount(keys, minlength=INT_BINS)
    return counts


def _update_bands_from_integers(state: StatsState, raw: np.ndarray, fill_value: str) -> None:
    """Band histograms straight from raw integer DN (N, 7, H, W): the fill -32768 is bin 0."""
    fill_bin = 0 - INT_LOW if fill_value == "0" else None  # "nan": missing pixels do not count
    for b in range(len(BANDS)):
        counts = _integer_band_counts(raw[:, b])
        missing = int(counts[FILL_VALUE - INT_LOW])
        counts[FILL_VALUE - INT_LOW] = 0
        if fill_bin is not None:
            counts[fill_bin] += missing
        state.update_integer_counts(b, counts)


def _counted_index_values(
    x: np.ndarray, names: Sequence[str], mask_using_qa: bool, mask_using_water_mask: bool
) -> Iterator[tuple[int, np.ndarray]]:
    """``(j, pixels that count for index j)`` with NaN fill, one index at a time, as 1-D arrays in
    the batch's C order.

    The same values, in the same order, as the finite entries of
    ``compute_indices(x, ..., fill=nan)[:, j]`` (so the statistics are bit-identical), with less
    work: the keep mask (QA, water) is built once per batch and the bands are gathered once at the
    kept pixels; each maskable formula runs on those pixels only (it is element-wise), block by
    cache-sized block, into one reused output. No masked, filled stack is made, and a result
    without a non-finite value is taken as it is. Each array is only valid until the next one is
    yielded (the output buffer is reused).
    """
    positions = band_positions(BANDS)
    specs = [get_index(n) for n in names]
    masked_needs = sorted({b for s in specs if s.maskable for b in s.needs})
    n, _, height, width = x.shape
    full = {b: x[:, positions[b]] for b in BANDS}
    keep = keep_mask(x, positions, mask_using_qa, mask_using_water_mask)
    blocks = [images for images, _ in cpu_blocks(n, height, width)] if height * width < _ROWS_SPLIT else None
    if blocks is None:  # large images: blocks of rows, as compute_indices makes them
        yield from _counted_index_values_by_rows(x, specs, keep, masked_needs, positions)
        return
    per_image = np.full(n, height * width, np.int64) if keep is None else keep.reshape(n, -1).sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(per_image)])
    kept = full if keep is None else {b: full[b][keep] for b in masked_needs}
    buffer = np.empty(n * height * width, np.float32)
    with np.errstate(all="ignore"):
        for j, spec in enumerate(specs):
            out = buffer if spec.maskable is False or keep is None else buffer[: int(offsets[-1])]
            pos = 0
            for images in blocks:
                if spec.maskable and keep is not None:
                    lo, hi = int(offsets[images.start]), int(offsets[min(images.stop, n)])
                    args = {b: kept[b][lo:hi] for b in spec.needs}
                else:
                    args = {b: full[b][images] for b in spec.needs}
                value = np.asarray(spec.func(**args), dtype=np.float32).reshape(-1)
                out[pos : pos + value.size] = value
                pos += value.size
            out = out[:pos]
            finite = np.isfinite(out)
            yield j, (out if finite.all() else out[finite])


#: Images of at least this many pixels are split into blocks of rows (see ``cpu_blocks``).
_ROWS_SPLIT = CPU_BLOCK_PIXELS


def _counted_index_values_by_rows(
    x: np.ndarray,
    specs: list[Any],
    keep: np.ndarray | None,
    masked_needs: list[str],
    positions: dict[str, int],
) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`_counted_index_values` for images of ``_ROWS_SPLIT`` pixels or more: per block of rows
    the bands are gathered at the kept pixels and every formula runs on them."""
    n, _, height, width = x.shape
    parts: list[list[np.ndarray]] = [[] for _ in specs]
    with np.errstate(all="ignore"):
        for images, rows in cpu_blocks(n, height, width):
            full = {b: x[images, positions[b], rows] for b in BANDS}
            block_keep = None if keep is None else keep[images, rows]
            kept = full if block_keep is None else {b: full[b][block_keep] for b in masked_needs}
            for j, spec in enumerate(specs):
                bands = kept if spec.maskable else full
                value = np.asarray(spec.func(**{b: bands[b] for b in spec.needs}), dtype=np.float32)
                finite = np.isfinite(value)
                parts[j].append(value.ravel() if finite.all() else value[finite])
    for j, p in enumerate(parts):
        yield j, (p[0] if len(p) == 1 else np.concatenate(p))


def accumulate(job: _Job, on_progress: Callable[[int], None] | None = None) -> StatsState:
    """Stats state of the tiles of ``job``, read ``batch_size`` at a time."""
    state = new_state(job.indices)
    fill = FILL_VALUES[job.fill_value]
    for start in range(0, len(job.paths), job.batch_size):
        chunk = job.paths[start : start + job.batch_size]
        raw = np.stack([read_raw_tile(p) for p in chunk])
        update_with_batch(state, raw_to_float(raw, fill), job, raw=raw)
        if on_progress is not None:
            on_progress(len(chunk))
    return state


def _worker(worker_id: int, job: _Job, results: Any) -> None:
    try:
        keep_freed_memory()
        with threadpool_limits(limits=1):  # one process per core: no BLAS threads spinning
            state = accumulate(job, on_progress=lambda n: results.put(("progress", n)))
        results.put(("done", (worker_id, state.to_payload())))
    except BaseException as exc:
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"band-stats worker failed: {exc!r}")
        results.put(("error", exc))


def _run_parallel(
    jobs: list[_Job], bar: Any, target: Callable[[int, _Job, Any], None] = _worker
) -> StatsState:
    """Run ``target`` (the worker loop) once per job in its own process and merge the states."""
    ctx = process_context()
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(w, job, results), daemon=True) for w, job in enumerate(jobs)]
    for p in procs:
        p.start()
    states: dict[int, StatsState] = {}
    quiet_after_exit = 0
    try:
        while len(states) < len(procs):
            try:
                kind, value = results.get(timeout=1.0)
            except queue_mod.Empty:
                # an exited worker has flushed its messages; one that stays silent has died
                dead = [p for w, p in enumerate(procs) if p.exitcode is not None and w not in states]
                quiet_after_exit = quiet_after_exit + 1 if dead else 0
                if quiet_after_exit >= 3:
                    raise RuntimeError(f"a band-stats worker died (exit code {dead[0].exitcode})") from None
                continue
            if kind == "progress":
                bar.update(value)
            elif kind == "done":
                states[value[0]] = StatsState.from_payload(value[1])
            else:
                raise value
    finally:
        for p in procs:
            if p.is_alive() and len(states) < len(procs):
                p.terminate()
            p.join()
    # merge in worker order so the result does not depend on which worker finished first
    total = states[0]
    for w in range(1, len(procs)):
        total.merge(states[w])
    return total


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandStats:
    """Loaded band statistics: ``channels[name]`` -> stat dict, the ``options`` they were made with."""

    channels: dict[str, dict[str, Any]]
    options: dict[str, Any]
    n_tiles: int
    path: Path | None = None

    @property
    def names(self) -> list[str]:
        return list(self.channels)

    def get(self, name: str) -> dict[str, Any]:
        try:
            return self.channels[name]
        except KeyError:
            where = f" in {self.path}" if self.path else ""
            raise KelpsegError(
                f"no statistics for channel {name!r}{where}; it has {', '.join(self.channels)}. "
                f"Recompute with {run_hint('band-stats', 'calculate-band-stats')} including that index"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {"options": self.options, "n_tiles": self.n_tiles, "channels": self.channels}


def _normalise_fill(fill_value: str | float) -> str:
    text = str(fill_value).strip().lower()
    if text in ("0", "0.0"):
        return "0"
    if text == "nan":
        return "nan"
    raise KelpsegError(f"fill_value must be 'nan' or '0', got {fill_value!r}")


def _resolve_indices(indices: Sequence[str] | str | None) -> tuple[str, ...]:
    if indices is None:
        return tuple(INDEX_REGISTRY)
    names = validate_index_names(indices)
    return tuple(n for n in INDEX_REGISTRY if n in set(names))


def compute_band_stats(
    layout: DataLayout,
    fill_value: str = "nan",
    mask_using_qa: bool = True,
    mask_using_water_mask: bool = True,
    indices: Sequence[str] | None = None,
    workers: int = 2,
    progress: bool = True,
    batch_size: int = DEFAULT_BATCH,
) -> tuple[BandStats, Path]:
    """Compute the statistics over the training tiles, write the JSON and return it with its path.

    ``indices``: names to include (None = every registered index); they are stored in registry
    order after the bands. The file is ``layout.band_stats_path(fill_value, mask_using_qa,
    mask_using_water_mask)``.
    """
    fill = _normalise_fill(fill_value)
    names = _resolve_indices(indices)
    catalog = train_catalog(layout)
    paths = tuple(str(p) for p in catalog["image_path"])
    if not paths:
        raise KelpsegError(f"{layout.metadata_csv}: no training tiles to compute band statistics on")
    workers = max(1, min(int(workers), len(paths)))
    jobs = [
        _Job(paths[w::workers], names, fill, bool(mask_using_qa), bool(mask_using_water_mask), batch_size)
        for w in range(workers)
    ]
    with progress_bar(len(paths), "band stats", enabled=progress) as bar:
        if workers == 1:
            with threadpool_limits(limits=1):
                state = accumulate(jobs[0], on_progress=bar.update)
        else:
            state = _run_parallel(jobs, bar)
    for c in np.flatnonzero(state.out_of_range):
        log.warning(
            "band stats: %d value(s) of %s outside [%d, %d] were clipped for its quantiles "
            "(count, min, max, mean and std are exact)",
            state.out_of_range[c],
            state.names[c],
            INT_LOW,
            INT_HIGH,
        )
    binary = {"QA", *(n for n in names if get_index(n).binary)}
    channels = {name: state.channel_stats(c, name in binary) for c, name in enumerate(state.names)}
    options = {
        "fill_value": fill,
        "mask_using_qa": bool(mask_using_qa),
        "mask_using_water_mask": bool(mask_using_water_mask),
        "split": "train",
        "indices": list(names),
        "quantile_method": QUANTILE_METHOD,
        "quantile_max_error": QUANTILE_MAX_ERROR,
        "std_ddof": 0,
        "binary_forced": dict(sorted(BINARY_FORCED.items())),
    }
    stats = BandStats(channels, dict(sorted(options.items())), state.n_tiles)
    path = layout.band_stats_path(fill, bool(mask_using_qa), bool(mask_using_water_mask))
    write_text(path, json.dumps(stats.to_dict(), indent=2, allow_nan=False) + "\n")
    return BandStats(channels, stats.options, stats.n_tiles, path), path


def load_band_stats(path: str | Path) -> BandStats:
    """Read a band-stats JSON written by :func:`compute_band_stats`, checking its structure."""
    path = Path(path)
    if not path.exists():
        raise StageNotRunError.missing(path, "band-stats", "calculate-band-stats")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KelpsegError(f"{path}: not a band-stats JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("channels"), dict) or not data["channels"]:
        raise KelpsegError(f"{path}: not a band-stats JSON (expected keys options, n_tiles, channels)")
    required = ("count", "min", "max", "mean", "std", "q01", "q99")
    for name, stats in data["channels"].items():
        if not isinstance(stats, dict):
            raise KelpsegError(f"{path}: channel {name!r} is not an object of statistics")
        missing = [k for k in required if k not in stats]
        if missing:
            raise KelpsegError(f"{path}: channel {name!r} lacks {', '.join(missing)}")
        bad = [k for k, v in stats.items() if k != "binary" and not _finite_number(v)]
        if bad:
            raise KelpsegError(f"{path}: channel {name!r} has non-finite or non-numeric {', '.join(bad)}")
    return BandStats(data["channels"], dict(data.get("options") or {}), int(data.get("n_tiles", 0)), path)


def _finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
