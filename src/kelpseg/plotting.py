"""Drawing helpers every kelpseg picture uses: stretches, composites, overlays, colour bars, scale bars.

One place for how kelpseg shows a tile, so that the sample panels (:mod:`kelpseg.prep.plotting`),
the EDA page (:mod:`kelpseg.prep.eda`), the training previews (:mod:`kelpseg.train.previews`), the
prediction previews (:mod:`kelpseg.infer.previews`) and the synthetic data preview
(:mod:`kelpseg.synthetic`) agree: the same 2-98 percentile stretch over valid pixels, the same
kelp colour, the same true/false positive/negative colours, the same 30 m pixels.

Landsat collection-2 level-2 digital numbers become surface reflectance as
``DN * 2.75e-5 - 0.2`` (:func:`reflectance`); NDVI is shown from reflectance, not from the raw
numbers (whose offset squeezes every value towards 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kelpseg.bands import BANDS, FILL_VALUE, band_positions

#: Composite name -> bands (in display order: red, green, blue channel; one band = grey).
COMPOSITES: dict[str, tuple[str, ...]] = {
    "tci": ("R", "G", "B"),
    "false_color": ("NIR", "R", "G"),
    "agriculture": ("SWIR", "NIR", "R"),
    "dem": ("DEM",),
}
COMPOSITE_TITLES = {
    "tci": "True colour (R,G,B)",
    "false_color": "Colour infrared (NIR,R,G)",
    "agriculture": "Shortwave (SWIR,NIR,R)",
}
NODATA_COLOR = "magenta"
MASK_COLOR = (0.0, 0.95, 1.0)
MASK_ALPHA = 0.7
#: Prediction against truth: true positive, false positive, false negative (RGB).
TP_COLOR = (0.0, 0.85, 0.2)
FP_COLOR = (1.0, 0.25, 0.1)
FN_COLOR = (1.0, 0.85, 0.0)
#: Predicted kelp and ground truth drawn together: filled prediction, truth outline.
PRED_COLOR = (1.0, 0.2, 0.6)
TRUTH_COLOR = (0.0, 0.95, 1.0)
#: Landsat ground sampling distance, and the area of one pixel (30 m x 30 m = 0.09 ha).
PIXEL_METRES = 30.0
PIXEL_HECTARES = PIXEL_METRES**2 / 10_000
#: Landsat collection-2 level-2 surface reflectance: ``DN * scale + offset``.
REFLECTANCE_SCALE = 2.75e-5
REFLECTANCE_OFFSET = -0.2


# ---- scaling and composites -------------------------------------------------------------------
def valid_mask(array: np.ndarray, fill: float = FILL_VALUE) -> np.ndarray:
    """True where a value is finite and not the fill value."""
    array = np.asarray(array)
    return np.isfinite(array) & (array != fill)


def robust_scale(
    array: np.ndarray,
    lo: float = 2.0,
    hi: float = 98.0,
    fill: float = FILL_VALUE,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Stretch each channel to [0, 1] between its ``lo`` and ``hi`` percentiles of valid pixels.

    ``array`` is (H, W) or channels-first (C, H, W). Percentiles ignore NaN/inf and ``fill``,
    and also the pixels where ``exclude`` (H, W) is true (e.g. clouds, so that they do not set
    the bright end) unless that leaves none. Values are clipped to the percentile range and
    rescaled; invalid pixels come back as NaN. A channel whose valid pixels are all equal maps
    to 0.
    """
    x = np.asarray(array, dtype=np.float32)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected a (H, W) or (C, H, W) array, got shape {x.shape}")
    valid = valid_mask(x, fill)
    keep = valid if exclude is None else valid & ~np.asarray(exclude, dtype=bool)
    out = np.full(x.shape, np.nan, dtype=np.float32)
    for c in range(x.shape[0]):
        sample = x[c][keep[c]] if keep[c].any() else x[c][valid[c]]
        if sample.size == 0:
            continue
        p_lo, p_hi = np.percentile(sample, [lo, hi])
        scaled = np.clip((x[c] - p_lo) / (p_hi - p_lo), 0.0, 1.0) if p_hi > p_lo else np.zeros_like(x[c])
        out[c] = np.where(valid[c], scaled, np.nan)
    return out[0] if single else out


def composite(
    tile: np.ndarray,
    bands: Sequence[str],
    positions: dict[str, int] | None = None,
    lo: float = 2.0,
    hi: float = 98.0,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Display image (H, W, len(bands)) float32 in [0, 1] of ``bands`` from a channels-first tile.

    ``positions`` maps band name -> channel of ``tile`` (default: the on-disk order
    :data:`kelpseg.bands.BANDS`). Each channel is stretched by :func:`robust_scale` (``exclude``
    is passed on); invalid pixels become 0 (black) so the result can be shown or saved directly.
    """
    positions = positions or band_positions(BANDS)
    missing = [b for b in bands if b not in positions]
    if missing:
        raise ValueError(f"band(s) {missing} not in the tile (has {list(positions)})")
    stack = np.stack([np.asarray(tile)[positions[b]] for b in bands])
    scaled = robust_scale(stack, lo, hi, exclude=exclude)
    return np.nan_to_num(np.moveaxis(scaled, 0, -1), nan=0.0)


def cloud_mask(tile: np.ndarray, positions: dict[str, int] | None = None) -> np.ndarray:
    """Pixels the QA band flags (QA != 0 and valid): clouds and corrupt pixels, (H, W) bool."""
    positions = positions or band_positions(BANDS)
    qa = np.asarray(tile)[positions["QA"]]
    return valid_mask(qa) & (qa != 0)


def tile_composites(tile: np.ndarray) -> dict[str, np.ndarray]:
    """Every composite of :data:`COMPOSITES` for a (7, H, W) tile; clouds do not set the stretch."""
    clouds = cloud_mask(tile)
    return {
        name: composite(tile, bands, exclude=None if name == "dem" else clouds)
        for name, bands in COMPOSITES.items()
    }


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint8 (NaN -> 0); a single channel is squeezed to (H, W)."""
    img = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
    out = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    return out[..., 0] if out.ndim == 3 and out.shape[-1] == 1 else out


def percentile_range(values: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> tuple[float, float]:
    """The ``lo``-``hi`` percentile range of the valid values (a non-empty range)."""
    ok = valid_mask(values)
    if not ok.any():
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(values[ok], [lo, hi]))
    return (vmin, vmax) if vmax > vmin else (vmin, vmin + 1.0)


def joint_stretch(rgb: np.ndarray, valid: np.ndarray, min_range: float = 0.0) -> np.ndarray:
    """One 2-98 percentile range for all channels of (C, H, W) over ``valid`` pixels -> (H, W, C).

    A joint range keeps the hue (water stays blue-green); ``min_range`` keeps a flat tile dark
    instead of blowing its noise up. NaN becomes black.
    """
    values = rgb[:, valid]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros((*rgb.shape[1:], rgb.shape[0]))
    lo, hi = np.percentile(values, [2, 98])
    hi = max(hi, lo + min_range)
    out = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.nan_to_num(np.moveaxis(out, 0, -1), nan=0.0)


def reflectance(dn: np.ndarray) -> np.ndarray:
    """Surface reflectance of level-2 digital numbers (NaN and fill stay NaN)."""
    x = np.asarray(dn, dtype=np.float32)
    return np.where(valid_mask(x), x * REFLECTANCE_SCALE + REFLECTANCE_OFFSET, np.nan).astype(np.float32)


def ndvi_reflectance(tile: np.ndarray, positions: dict[str, int] | None = None) -> np.ndarray:
    """NDVI (NIR - R) / (NIR + R) from reflectance, (H, W) float32; NaN where undefined."""
    positions = positions or band_positions(BANDS)
    nir, red = reflectance(tile[positions["NIR"]]), reflectance(tile[positions["R"]])
    total = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = np.where(np.abs(total) > 1e-6, (nir - red) / total, np.nan)
    return np.clip(ndvi, -1, 1).astype(np.float32)


def mask_overlay(
    mask: np.ndarray, color: Sequence[float] = MASK_COLOR, alpha: float = MASK_ALPHA
) -> np.ndarray:
    """RGBA (H, W, 4) image: ``color`` where ``mask`` is true, transparent elsewhere."""
    overlay = np.zeros((*np.shape(mask), 4), dtype=np.float32)
    overlay[np.asarray(mask, dtype=bool)] = (*color, alpha)
    return overlay


def outcome_overlay(pred: np.ndarray, truth: np.ndarray, alpha: float = 0.85) -> np.ndarray:
    """RGBA (H, W, 4): true positives :data:`TP_COLOR`, false positives ``FP``, false negatives ``FN``."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    overlay = np.zeros((*pred.shape, 4), dtype=np.float32)
    overlay[pred & truth] = (*TP_COLOR, alpha)
    overlay[pred & ~truth] = (*FP_COLOR, alpha)
    overlay[~pred & truth] = (*FN_COLOR, alpha)
    return overlay


def outcome_legend(ax: Any, fontsize: float = 7) -> None:
    """A small legend of the :func:`outcome_overlay` colours."""
    from matplotlib.patches import Patch

    handles = [
        Patch(color=TP_COLOR, label="TP"),
        Patch(color=FP_COLOR, label="FP"),
        Patch(color=FN_COLOR, label="FN"),
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=fontsize, framealpha=0.7, handlelength=1)


def add_colorbar(fig: Any, image: Any, ax: Any, label: str | None = None, labelsize: float = 7) -> Any:
    """A slim colour bar right of ``ax``."""
    cax = ax.inset_axes((1.03, 0.0, 0.05, 1.0))
    bar = fig.colorbar(image, cax=cax)
    cax.tick_params(labelsize=labelsize)
    if label:
        bar.set_label(label, fontsize=labelsize)
    return bar


def add_scale_bar(
    ax: Any, length_m: float = 1000.0, pixel_m: float = PIXEL_METRES, width: int | None = None
) -> None:
    """A white ``length_m`` bar with its label in the lower left of an image axis (pixels of ``pixel_m``)."""
    from matplotlib.patches import Rectangle

    n_px = length_m / pixel_m
    x0 = ax.get_xlim()[0] + 8
    y0 = max(ax.get_ylim()) - 10
    ax.add_patch(Rectangle((x0, y0 - 4), n_px, 4, facecolor="white", edgecolor="black", linewidth=0.5))
    label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    ax.text(
        x0 + n_px / 2,
        y0 - 7,
        label,
        color="white",
        fontsize=7,
        ha="center",
        va="bottom",
        bbox={"facecolor": "black", "alpha": 0.4, "pad": 1, "linewidth": 0},
    )


def hide_ticks(axes: Any) -> None:
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
