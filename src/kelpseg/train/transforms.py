"""Batch transforms: raw 7-band tiles -> normalised model input, and exact geometric augmentation.

``BatchTransform`` runs on whole batches with tensor ops, on whatever device the batch is on, and is
an ``nn.Module`` whose channel statistics are buffers: it moves with ``.to(device)``, it is saved in
checkpoints, and the inference code applies exactly the transform the model was trained with.

Steps of ``BatchTransform.forward`` (raw float batch ``(N, 7, H, W)`` in file band order, NaN at the
competition fill value):

1. Missing pixels: kept as NaN (``fill_missing_pixels_with_nan=True``, the reference's best setup) or
   set to 0 (its other setting; masked index pixels then become 0 too).
2. Spectral indices computed on the raw 7 bands (``kelpseg.features.indices.compute_indices``) with the
   QA / water masking options; masked or undefined index pixels are NaN.
3. Channels selected: the configured bands in the configured order, then the indices in theirs.
4. Non-finite values, for the strategies based on band stats (quantile, min-max, z-score): NaN and
   −inf become the channel's stats ``min``, +inf its ``max`` (the reference's ``RemoveNaNs``). Nothing
   else is added (no validity channel), so a checkpoint keeps the reference's input layout.
   For the per-sample strategies the bounds are computed per image and channel over the finite
   pixels only, and NaN / −inf become that image's lower bound, +inf its upper bound (the reference
   filled with the global min first, which squashed the per-sample range of any tile with a gap).
5. Normalisation (reference §3.6): ``quantile`` clamps to [q01, q99] and rescales to [0, 1];
   ``min-max`` the same with [min, max]; ``z-score`` is (x − mean)/std; ``per-sample-quantile`` and
   ``per-sample-min-max`` use the 1st/99th percentile (linear interpolation, as ``torch.quantile``)
   or the min/max of each image and channel. Denominators are clamped to at least ``1e-6`` instead of
   the reference's ``+ ε``, so the results are exact whenever the range is not degenerate; a
   constant channel maps to 0.
6. Geometry to the model size S = ``image_size``:
   * ``pad``: constant 0 **after** normalisation, centred: ``(S − H) // 2`` before, the rest after
     (350 → 352: one pixel each side; an odd difference puts the extra pixel at the end). The
     reference padded the raw DN with 0 before computing indices, so its border pixels were
     "black, no-data-free land"; padding the normalised tensor with 0 gives the low end of every
     quantile/min-max range (the mean for z-score) and keeps the indices free of fake pixels.
   * ``resize``: ``F.interpolate`` to S × S with the chosen mode (no antialiasing, like the
     reference); masks are always resized with nearest.

``augment`` draws, per sample, one of the 8 exact symmetries of the square (flips and rotations by
multiples of 90°; no interpolation, unlike the reference's arbitrary-angle rotation) and applies
the same one to the image and its mask, after an optional random crop (same window for both). It
is meant for the model input, after ``BatchTransform`` and ``pad_mask``.

``reference_order=True`` (set for run directories of the reference solution, see
:mod:`kelpseg.reference`) reproduces the reference's preprocessing where kelpseg changed it:
step 6 runs first, on the raw tile (padding pixels are raw 0 in every band and get index values),
the channel stats may hold non-finite ``min``/``max`` (its stats script leaves ``inf``/``-inf``
where a tile had a gap; the fill of step 4 then chains NaN -> inf -> -inf exactly as its
``RemoveNaNs`` did), the indices use its arithmetic (``reference_numerics`` of
:func:`kelpseg.features.indices.compute_indices`), and the per-sample strategies fill
non-finite pixels with the global stats before taking per-image bounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from kelpseg.bands import BAND_INDEX, BANDS, N_BANDS, TILE_SIZE, band_positions
from kelpseg.errors import KelpsegError, run_hint
from kelpseg.features.indices import compute_indices, validate_index_names
from kelpseg.train.input_options import INTERPOLATIONS, NORMALIZATION_STRATEGIES, RESIZE_STRATEGIES

#: Stats every channel must have in the band-stats file.
STAT_KEYS = ("min", "max", "mean", "std", "q01", "q99")
#: Stats that only fill non-finite pixels (except for min-max): ``reference_order`` lets them be non-finite.
_FILL_KEYS = ("min", "max")
#: Smallest denominator used when rescaling (see the module docstring).
MIN_SCALE = 1e-6
#: Quantiles of the per-sample-quantile strategy.
PER_SAMPLE_QUANTILES = (0.01, 0.99)
#: Largest number of elements sorted at once by the per-sample quantile (bounds peak memory).
_SORT_CHUNK_ELEMENTS = 1 << 24


class BandStatsError(KelpsegError):
    """The band-stats file lacks a channel or a statistic that the transform needs."""


def channel_table(band_stats: Any) -> Mapping[str, Mapping[str, Any]]:
    """The ``name -> {stat: value}`` table of a ``BandStats``, a band-stats JSON dict or a plain mapping."""
    channels = getattr(band_stats, "channels", None)
    if isinstance(channels, Mapping):
        return channels
    if isinstance(band_stats, Mapping):
        inner = band_stats.get("channels")
        if isinstance(inner, Mapping) and all(isinstance(v, Mapping) for v in inner.values()):
            return inner
        return band_stats
    raise TypeError(f"expected BandStats or a mapping of channel -> stats, got {type(band_stats).__name__}")


def _stats_tensor(
    table: Mapping[str, Mapping[str, Any]], names: Sequence[str], key: str, finite: bool = True
) -> torch.Tensor:
    values = []
    for name in names:
        if name not in table:
            raise BandStatsError(
                f"band stats have no channel {name!r} (channels present: {', '.join(table)}); "
                f"re-run {run_hint('band-stats', 'calculate-band-stats')}"
            )
        stats = table[name]
        if key not in stats or stats[key] is None:
            raise BandStatsError(
                f"band stats of channel {name!r} lack {key!r}; "
                f"re-run {run_hint('band-stats', 'calculate-band-stats')}"
            )
        value = float(stats[key])
        if finite and (value != value or value in (float("inf"), float("-inf"))):
            raise BandStatsError(f"band stats of channel {name!r}: {key} = {value} is not finite")
        values.append(value)
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


def pad_amounts(size: int, target: int) -> tuple[int, int]:
    """Pixels added before and after one axis to go from ``size`` to ``target`` (extra one at the end)."""
    if target < size:
        raise ValueError(f"cannot pad {size} pixels to a smaller size {target}")
    before = (target - size) // 2
    return before, target - size - before


class BatchTransform(nn.Module):
    """Raw float batch ``(N, 7, H, W)`` (NaN at fill) -> model input ``(N, C, S, S)``; see the module doc."""

    def __init__(
        self,
        band_stats: Any,
        bands: Sequence[str] = ("R", "G", "B", "SWIR", "NIR", "QA", "DEM"),
        spectral_indices: Sequence[str] = ("DEMWM", "NDVI"),
        *,
        image_size: int = 352,
        resize_strategy: str = "pad",
        interpolation: str = "nearest",
        normalization_strategy: str = "quantile",
        fill_missing_pixels_with_nan: bool = True,
        mask_using_qa: bool = True,
        mask_using_water_mask: bool = True,
        reference_order: bool = False,
    ) -> None:
        super().__init__()
        self.bands = list(bands)
        band_positions(self.bands)  # unknown names raise
        self.spectral_indices = validate_index_names(list(spectral_indices)) if spectral_indices else []
        if not self.bands and not self.spectral_indices:
            raise ValueError("the transform needs at least one band or spectral index")
        _check_choice("normalization_strategy", normalization_strategy, NORMALIZATION_STRATEGIES)
        _check_choice("resize_strategy", resize_strategy, RESIZE_STRATEGIES)
        _check_choice("interpolation", interpolation, INTERPOLATIONS)
        if resize_strategy == "pad" and image_size < TILE_SIZE:
            raise ValueError(f"image_size={image_size} < {TILE_SIZE}: padding cannot shrink a tile")
        self.image_size = int(image_size)
        self.resize_strategy = resize_strategy
        self.interpolation = interpolation
        self.normalization_strategy = normalization_strategy
        self.fill_missing_pixels_with_nan = bool(fill_missing_pixels_with_nan)
        self.mask_using_qa = bool(mask_using_qa)
        self.mask_using_water_mask = bool(mask_using_water_mask)
        self.reference_order = bool(reference_order)
        self._band_channels = [BAND_INDEX[b] for b in self.bands]
        self._positions = band_positions(BANDS)

        table = channel_table(band_stats)
        names = self.channel_names
        for key in STAT_KEYS:
            lenient = self.reference_order and key in _FILL_KEYS and normalization_strategy != "min-max"
            self.register_buffer(f"stat_{key}", _stats_tensor(table, names, key, finite=not lenient))
        self._fused = self._can_fuse()

    def _can_fuse(self) -> bool:
        """Whether :meth:`_normalize_and_pad` gives exactly ``resize(normalize(x))``.

        True for padding with the ``quantile`` / ``min-max`` strategies when every channel has
        ``min <= low <= high <= max`` (band-stats files always do): then clamping maps ``-inf``
        to ``low`` and ``+inf`` to ``high`` exactly as filling them with ``min`` / ``max`` first
        would, and a NaN (filled with ``min``, clamped to ``low``) becomes exactly 0.
        """
        if self.reference_order or self.resize_strategy != "pad":
            return False
        if self.normalization_strategy not in ("quantile", "min-max"):
            return False
        low, high = self._bounds()
        return bool(
            torch.isfinite(self.stat_min).all()
            and torch.isfinite(self.stat_max).all()
            and (self.stat_min <= low).all()
            and (low <= high).all()
            and (high <= self.stat_max).all()
        )

    def _bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalization_strategy == "quantile":
            return self.stat_q01, self.stat_q99
        return self.stat_min, self.stat_max

    def _normalize_and_pad(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 4-6 in one buffer (see :meth:`_can_fuse`): clamp, rescale and NaN -> 0 computed in
        place inside the zero-padded output, 3 passes over the pixels instead of about 10."""
        low, high = self._bounds()
        n, c, height, width = x.shape
        left, right, top, bottom = self._pad_widths(height, width)
        out = x.new_zeros((n, c, height + top + bottom, width + left + right))
        inner = out[:, :, top : top + height, left : left + width]
        torch.clamp(x, low, high, out=inner)  # NaN stays NaN; ±inf -> low / high
        inner.sub_(low).div_((high - low).clamp(min=MIN_SCALE))
        return out.nan_to_num_(nan=0.0)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any, band_stats: Any) -> BatchTransform:
        """Build from a ``TrainConfig`` (or anything with the same attribute names)."""
        return cls(
            band_stats,
            bands=list(config.bands),
            spectral_indices=list(config.spectral_indices),
            image_size=config.image_size,
            resize_strategy=config.resize_strategy,
            interpolation=config.interpolation,
            normalization_strategy=config.normalization_strategy,
            fill_missing_pixels_with_nan=config.fill_missing_pixels_with_nan,
            mask_using_qa=config.mask_using_qa,
            mask_using_water_mask=config.mask_using_water_mask,
            reference_order=bool(getattr(config, "reference_preprocessing", False)),
        )

    # ---- facts -------------------------------------------------------------------------------
    @property
    def channel_names(self) -> list[str]:
        """Model input channels in order: the bands as configured, then the indices."""
        return [*self.bands, *self.spectral_indices]

    @property
    def in_channels(self) -> int:
        return len(self.bands) + len(self.spectral_indices)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channel_names}, image_size={self.image_size}, resize={self.resize_strategy}, "
            f"normalization={self.normalization_strategy}"
        )

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if raw.ndim != 4 or raw.shape[1] != N_BANDS:
            raise ValueError(f"expected a raw batch shaped (N, {N_BANDS}, H, W), got {tuple(raw.shape)}")
        if self.reference_order:
            return self.normalize(self.features(self.resize(raw)))
        x = self.features(raw)
        if self._fused:
            return self._normalize_and_pad(x)
        x = self.normalize(x)
        return self.resize(x)

    def features(self, raw: torch.Tensor) -> torch.Tensor:
        """Steps 1-3: selected bands then indices, ``(N, C, H, W)`` float32, NaN where unknown."""
        raw = raw.float()
        fill = float("nan")
        if not self.fill_missing_pixels_with_nan:
            raw = torch.nan_to_num(raw, nan=0.0)
            fill = 0.0
        parts = [raw[:, self._band_channels]]
        if self.spectral_indices:
            parts.append(
                compute_indices(
                    raw,
                    self._positions,
                    self.spectral_indices,
                    mask_using_qa=self.mask_using_qa,
                    mask_using_water_mask=self.mask_using_water_mask,
                    fill=fill,
                    reference_numerics=self.reference_order,
                )
            )
        return torch.cat(parts, dim=1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 4-5 on ``(N, C, H, W)`` features; returns finite float32 values."""
        strategy = self.normalization_strategy
        if strategy.startswith("per-sample"):
            if self.reference_order:
                x = _fill_non_finite(x, self.stat_min, self.stat_max)
            if strategy == "per-sample-quantile":
                lo, hi = per_sample_quantiles(x, PER_SAMPLE_QUANTILES)
            else:
                lo, hi = per_sample_min_max(x)
            x = _fill_non_finite(x, lo, hi)
            return _rescale(x, lo, hi)
        x = _fill_non_finite(x, self.stat_min, self.stat_max)
        if strategy == "quantile":
            return _rescale(x, self.stat_q01, self.stat_q99)
        if strategy == "min-max":
            return _rescale(x, self.stat_min, self.stat_max)
        return (x - self.stat_mean) / self.stat_std.clamp(min=MIN_SCALE)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Step 6: pad or resize ``(N, C, H, W)`` to ``(N, C, S, S)``."""
        size = self.image_size
        if self.resize_strategy == "pad":
            return F.pad(x, self._pad_widths(x.shape[-2], x.shape[-1]), value=0.0)
        if tuple(x.shape[-2:]) == (size, size):
            return x
        return _interpolate(x, (size, size), self.interpolation)

    # ---- masks and predictions ---------------------------------------------------------------
    def pad_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Bring a mask ``(N, H, W)`` or ``(N, 1, H, W)`` to the model size (pad with 0 or nearest resize)."""
        if self.resize_strategy == "pad":
            return F.pad(mask, self._pad_widths(mask.shape[-2], mask.shape[-1]), value=0)
        size = (self.image_size, self.image_size)
        if tuple(mask.shape[-2:]) == size:
            return mask
        return _interpolate(mask, size, "nearest")

    def unpad(self, pred: torch.Tensor, size: int = TILE_SIZE, mode: str | None = None) -> torch.Tensor:
        """Model output ``(N, K, S, S)`` (or ``(N, S, S)``) back to ``size`` × ``size`` (the tile).

        ``pad``: the centred window that ``resize``/``pad_mask`` padded around, exactly. ``resize``:
        interpolation back with ``mode`` (default: the configured interpolation).
        """
        height, width = pred.shape[-2:]
        if self.resize_strategy == "pad":
            top, _ = pad_amounts(size, height)
            left, _ = pad_amounts(size, width)
            return pred[..., top : top + size, left : left + size]
        if (height, width) == (size, size):
            return pred
        return _interpolate(pred, (size, size), mode or self.interpolation)

    def _pad_widths(self, height: int, width: int) -> tuple[int, int, int, int]:
        top, bottom = pad_amounts(height, self.image_size)
        left, right = pad_amounts(width, self.image_size)
        return (left, right, top, bottom)


class TransformingCollate:
    """DataLoader ``collate_fn`` that also applies an input transform in the loader worker (with
    the worker's single thread): ``batch["input"]`` holds ``transform(batch["image"])``.

    ``no_grad`` rather than ``inference_mode``: training keeps these tensors for backward, which
    inference tensors do not allow; the values are the same either way.
    """

    def __init__(self, transform: nn.Module) -> None:
        self.transform = transform

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(items)
        with torch.no_grad():
            batch["input"] = self.transform(batch["image"])
        return batch


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{what}={value!r}; expected one of {', '.join(choices)}")


def _interpolate(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate`` for (N, H, W) or (N, C, H, W) of any dtype (integers only with nearest modes)."""
    squeeze = x.ndim == 3
    y = x.unsqueeze(1) if squeeze else x
    dtype = y.dtype
    if not y.is_floating_point():
        if not mode.startswith("nearest"):
            raise ValueError(f"integer tensors can only be resized with nearest, not {mode}")
        y = y.float()
    kwargs: dict[str, Any] = {}
    if mode in ("bilinear", "bicubic"):
        kwargs = {"align_corners": False, "antialias": False}
    y = F.interpolate(y, size=size, mode=mode, **kwargs).to(dtype)
    return y.squeeze(1) if squeeze else y


def _fill_non_finite(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """NaN and −inf -> ``low``, +inf -> ``high`` (both broadcast against ``x``)."""
    x = torch.where(torch.isnan(x) | (x == float("-inf")), low, x)
    return torch.where(x == float("inf"), high, x)


def _rescale(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Clamp to [low, high] and map linearly to [0, 1]."""
    x = torch.minimum(torch.maximum(x, low), high)
    return (x - low) / (high - low).clamp(min=MIN_SCALE)


def per_sample_min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel min and max over the finite pixels, shaped (N, C, 1, 1); 0 if none finite."""
    finite = torch.isfinite(x)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    lo = torch.where(finite, x, inf).amin(dim=(-2, -1), keepdim=True)
    hi = torch.where(finite, x, -inf).amax(dim=(-2, -1), keepdim=True)
    empty = ~finite.flatten(2).any(dim=-1)[..., None, None]
    return lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)


def per_sample_quantiles(x: torch.Tensor, quantiles: Sequence[float]) -> tuple[torch.Tensor, ...]:
    """Per image and channel quantiles over the finite pixels, each shaped (N, C, 1, 1).

    Linear interpolation between order statistics, as ``torch.quantile``/``numpy.quantile`` do
    (``torch.nanquantile`` refuses inputs above 16 M elements, so this sorts in row chunks). A
    channel with no finite pixel gets 0.
    """
    n, c = x.shape[:2]
    flat = x.reshape(n * c, -1)
    rows_per_chunk = max(1, _SORT_CHUNK_ELEMENTS // max(1, flat.shape[1]))
    results: list[list[torch.Tensor]] = [[] for _ in quantiles]
    for start in range(0, flat.shape[0], rows_per_chunk):
        chunk = flat[start : start + rows_per_chunk]
        finite = torch.isfinite(chunk)
        count = finite.sum(dim=1, keepdim=True)
        ordered = torch.sort(torch.where(finite, chunk, float("inf")), dim=1).values
        last = (count - 1).clamp(min=0).to(chunk.dtype)
        for out, q in zip(results, quantiles, strict=True):
            pos = q * last
            below = pos.floor().long()
            above = pos.ceil().long()
            a = ordered.gather(1, below)
            b = ordered.gather(1, above)
            value = a + (b - a) * (pos - below.to(chunk.dtype))
            value = torch.where(a == b, a, value)  # exact order statistic; avoids inf - inf
            out.append(value.masked_fill(count == 0, 0.0))
    return tuple(torch.cat(r).view(n, c, 1, 1) for r in results)


# ---------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------

#: The 8 symmetries of the square as (horizontal flip first?, number of 90° counter-clockwise turns).
DIHEDRAL = tuple((flip, k) for flip in (False, True) for k in range(4))


def _apply_symmetry(t: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    if flip:
        t = torch.flip(t, dims=(-1,))
    if k:
        t = torch.rot90(t, k, dims=(-2, -1))
    return t


def random_crop(
    image: torch.Tensor,
    mask: torch.Tensor,
    crop_size: int,
    generator: torch.Generator | None = None,
    kelp_probability: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``crop_size`` window of each image and its mask (a new window per sample).

    ``kelp_probability``: the chance that a sample whose mask has kelp (value 1) gets a window
    around one of its kelp pixels (picked uniformly, at a uniform place in the window) instead of
    a uniform window. A 96-pixel window covers 7.5 % of a 350-pixel tile and kelp beds are narrow
    coastal strips, so a uniform window of a kelp tile often holds no kelp (about half of them on
    the synthetic data; docs/learning.md). 0 draws no extra random numbers: the windows are the
    uniform ones, as without the option.
    """
    height, width = image.shape[-2:]
    if crop_size > height or crop_size > width:
        raise ValueError(f"crop_size={crop_size} is larger than the images ({height} x {width})")
    if not 0.0 <= kelp_probability <= 1.0:
        raise ValueError(f"kelp_probability must lie in [0, 1], got {kelp_probability}")
    n = image.shape[0]
    tops = torch.randint(0, height - crop_size + 1, (n,), generator=generator).tolist()
    lefts = torch.randint(0, width - crop_size + 1, (n,), generator=generator).tolist()
    if kelp_probability > 0.0:
        _centre_on_kelp(mask, crop_size, generator, kelp_probability, tops, lefts)
    windows = list(enumerate(zip(tops, lefts, strict=True)))
    images = [image[i, ..., y : y + crop_size, x : x + crop_size] for i, (y, x) in windows]
    masks = [mask[i, ..., y : y + crop_size, x : x + crop_size] for i, (y, x) in windows]
    return torch.stack(images), torch.stack(masks)


def _centre_on_kelp(
    mask: torch.Tensor,
    crop_size: int,
    generator: torch.Generator | None,
    probability: float,
    tops: list[int],
    lefts: list[int],
) -> None:
    """Move the chosen samples' windows (in place) onto a random kelp pixel of their masks."""
    n = mask.shape[0]
    height, width = mask.shape[-2:]
    chosen = (torch.rand(n, generator=generator) < probability).tolist()
    picks = torch.rand(n, generator=generator).tolist()
    offsets = torch.randint(0, crop_size, (n, 2), generator=generator).tolist()
    for i in range(n):
        if not chosen[i]:
            continue
        kelp = (mask[i].reshape(-1) == 1).nonzero().flatten()  # flat indices into height x width
        if kelp.numel() == 0:
            continue
        flat = int(kelp[min(int(picks[i] * kelp.numel()), kelp.numel() - 1)])
        row, col = divmod(flat, width)
        tops[i] = min(max(row - offsets[i][0], 0), height - crop_size)
        lefts[i] = min(max(col - offsets[i][1], 0), width - crop_size)


def augment(
    image: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
    crop_size: int | None = None,
    kelp_crop_probability: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random exact flips / 90° rotations (and an optional crop), identical for image and mask.

    ``image`` is ``(N, C, H, W)``, ``mask`` ``(N, H, W)`` or ``(N, 1, H, W)`` of any dtype; both keep
    their dtype and device. Each sample gets one of the 8 symmetries of the square, uniformly (this
    equals independent horizontal flip, vertical flip and a 0°/90° turn with p = 0.5 each). Random
    numbers come from ``generator`` (a CPU ``torch.Generator``), so a seeded generator gives the
    same augmentation on any device. Rotations need square images (or a square crop).
    """
    if image.shape[0] != mask.shape[0] or image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} do not match")
    choice = torch.randint(0, len(DIHEDRAL), (image.shape[0],), generator=generator)
    if crop_size is not None:
        image, mask = random_crop(image, mask, crop_size, generator, kelp_crop_probability)
    if image.shape[-2] != image.shape[-1]:
        raise ValueError(f"90° rotations need square images, got {tuple(image.shape[-2:])}")
    out_image = torch.empty_like(image)
    out_mask = torch.empty_like(mask)
    for code in torch.unique(choice).tolist():
        rows = (choice == code).nonzero().flatten().to(image.device)
        flip, k = DIHEDRAL[code]
        out_image[rows] = _apply_symmetry(image[rows], flip, k)
        out_mask[rows] = _apply_symmetry(mask[rows], flip, k)
    return out_image, out_mask
