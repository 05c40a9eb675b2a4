"""Sample plots: 8-bit composites and one panel figure per tile, for looking at the data.

For each tile (train and test) this writes

* ``processed/composites/<name>/<tile_id>_<name>.png`` for the composites in :data:`COMPOSITES`
  (true colour, colour infrared, shortwave "agriculture", and the DEM in grey);
* ``processed/plots/<tile_id>_plot.png``: one row of panels with the three colour composites,
  NDVI, DEM, QA and, for training tiles, the kelp mask drawn over the true-colour image.

Every channel is stretched between its own 2nd and 98th percentile computed over *valid*
pixels only (not NaN, not the -32768 fill). Taking the minimum before dropping the fill value,
as the reference plots did, maps a DEM with nodata to an almost flat white image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kelpseg.bands import BANDS, FILL_VALUE, band_positions
from kelpseg.errors import KelpsegError
from kelpseg.io.atomic import atomic_path, safe_child, save_figure
from kelpseg.io.catalog import load_catalog
from kelpseg.io.tiles import read_mask, read_tile
from kelpseg.layout import DataLayout
from kelpseg.parallel import pmap

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
#: zlib level of the PNGs: 1 writes ~3x faster than the default 6 for ~20% bigger files.
PNG_COMPRESS_LEVEL = 1


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


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an 8-bit grey (H, W) or RGB (H, W, 3) image as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return Path(path)


def composite_path(layout: DataLayout, tile_id: str, name: str) -> Path:
    return safe_child(layout.composites_dir / name, f"{tile_id}_{name}.png", "tile file name")


def plot_path(layout: DataLayout, tile_id: str) -> Path:
    return safe_child(layout.plots_dir, f"{tile_id}_plot.png", "tile file name")


# ---- panel figure -----------------------------------------------------------------------------
def _ndvi(tile: np.ndarray) -> np.ndarray:
    """NDVI of the raw digital numbers, as the competition files hold them.

    Landsat level-2 numbers carry an offset (zero reflectance is about 7,273), so values sit
    closer to 0 than reflectance-based NDVI would; the panel keeps the fixed [-1, 1] range so
    that tiles can be compared.
    """
    from kelpseg.features.indices import compute_index

    return np.asarray(compute_index("NDVI", tile, band_positions(BANDS)), dtype=np.float32)


def _percentile_range(values: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> tuple[float, float]:
    ok = valid_mask(values)
    if not ok.any():
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(values[ok], [lo, hi]))
    return (vmin, vmax) if vmax > vmin else (vmin, vmin + 1.0)


def _colorbar(fig: Any, image: Any, ax: Any) -> None:
    cax = ax.inset_axes((1.03, 0.0, 0.05, 1.0))
    fig.colorbar(image, cax=cax)
    cax.tick_params(labelsize=7)


def panel_figure(
    tile: np.ndarray,
    mask: np.ndarray | None = None,
    title: str | None = None,
    composites: dict[str, np.ndarray] | None = None,
) -> Any:
    """A one-row matplotlib Figure of a (7, H, W) tile (NaN at fill) and its optional kelp mask."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    composites = composites or tile_composites(tile)
    n_panels = 6 + (mask is not None)
    # a fixed grid (no constrained layout, which draws the figure twice): ~4x faster to save
    fig = Figure(figsize=(20 * n_panels / 7, 3.4))
    axes = fig.subplots(
        1, n_panels, gridspec_kw={"left": 0.005, "right": 0.985, "bottom": 0.03, "top": 0.84, "wspace": 0.35}
    )
    for ax, name in zip(axes, COMPOSITE_TITLES, strict=False):
        ax.imshow(composites[name])
        ax.set_title(COMPOSITE_TITLES[name], fontsize=9)

    ndvi = np.ma.masked_invalid(_ndvi(tile))
    cmap = colormaps["RdYlGn"].with_extremes(bad="black")
    im = axes[3].imshow(ndvi, cmap=cmap, vmin=-1, vmax=1)
    axes[3].set_title("NDVI", fontsize=9)
    _colorbar(fig, im, axes[3])

    dem = tile[BANDS.index("DEM")]
    vmin, vmax = _percentile_range(dem)
    cmap = colormaps["viridis"].with_extremes(bad=NODATA_COLOR)
    im = axes[4].imshow(np.ma.masked_invalid(dem), cmap=cmap, vmin=vmin, vmax=vmax)
    axes[4].set_title(f"DEM (nodata: {NODATA_COLOR})", fontsize=9)
    _colorbar(fig, im, axes[4])

    qa = tile[BANDS.index("QA")]
    cmap = colormaps["gray"].with_extremes(bad=NODATA_COLOR)
    qa_max = float(np.nanmax(qa)) if np.isfinite(qa).any() else 1.0
    axes[5].imshow(np.ma.masked_invalid(qa), cmap=cmap, vmin=0, vmax=max(qa_max, 1.0))
    axes[5].set_title("QA (white = cloud/bad)", fontsize=9)

    if mask is not None:
        overlay = np.zeros((*mask.shape, 4), dtype=np.float32)
        overlay[mask.astype(bool)] = (*MASK_COLOR, MASK_ALPHA)
        axes[6].imshow(composites["tci"])
        axes[6].imshow(overlay)
        axes[6].set_title(f"Kelp mask ({int(mask.sum())} px)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# ---- one tile, many tiles ---------------------------------------------------------------------
@dataclass(frozen=True)
class _PlotJob:
    tile_id: str
    split: str
    image_path: str
    mask_path: str | None
    root: str
    dpi: int


def plot_tile(job: _PlotJob) -> Path:
    """Write the composites and the panel figure of one tile; return the figure's path."""
    layout = DataLayout(Path(job.root))
    tile = read_tile(job.image_path)
    mask = read_mask(job.mask_path) if job.mask_path and Path(job.mask_path).exists() else None
    images = tile_composites(tile)
    for name, img in images.items():
        write_png(composite_path(layout, job.tile_id, name), to_uint8(img))
    fig = panel_figure(tile, mask, title=f"{job.tile_id} ({job.split})", composites=images)
    return save_figure(
        plot_path(layout, job.tile_id), fig, dpi=job.dpi, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL}
    )


def select_tiles(
    catalog: pd.DataFrame,
    n: int | None = None,
    tile_ids: Sequence[str] | None = None,
    seed: int = 0,
    source: str | Path = "the metadata CSV",
) -> pd.DataFrame:
    """Rows of ``catalog`` for ``tile_ids`` (all if None), then a seeded sample of ``n`` of them.

    The result keeps catalog order. Unknown ids raise :class:`KelpsegError` naming them.
    """
    rows = catalog
    if tile_ids is not None:
        wanted = list(dict.fromkeys(tile_ids))
        known = set(catalog["tile_id"])
        unknown = [t for t in wanted if t not in known]
        if unknown:
            shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise KelpsegError(f"unknown tile id(s) {shown}: not listed in {source}")
        rows = catalog[catalog["tile_id"].isin(wanted)]
    if n is not None:
        if n < 1:
            raise KelpsegError(f"number of tiles to plot must be at least 1, got {n}")
        if n < len(rows):
            pick = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
            rows = rows.iloc[np.sort(pick)]
    return rows.reset_index(drop=True)


def plot_samples(
    layout: DataLayout,
    n: int | None = None,
    tile_ids: Sequence[str] | None = None,
    workers: int = 2,
    progress: bool = True,
    dpi: int = 100,
    seed: int = 0,
) -> Path:
    """Write composites and panel figures for the catalog's tiles (all, ``tile_ids``, or ``n`` of them).

    Returns ``layout.plots_dir``. ``n`` draws a seeded random sample (kept in catalog order).
    """
    catalog = load_catalog(layout)
    rows = select_tiles(catalog, n, tile_ids, seed, source=layout.metadata_csv)
    jobs = [
        _PlotJob(
            r.tile_id,
            r.split,
            r.image_path,
            r.mask_path if isinstance(r.mask_path, str) else None,
            str(layout.root),
            dpi,
        )
        for r in rows.itertuples(index=False)
    ]
    layout.plots_dir.mkdir(parents=True, exist_ok=True)
    pmap(plot_tile, jobs, workers=workers, progress=progress, desc="Plotting tiles", chunksize=4)
    return layout.plots_dir
