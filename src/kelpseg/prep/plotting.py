"""Sample plots: 8-bit composites and one panel figure per tile, for looking at the data.

For each tile (train and test) this writes

* ``processed/composites/<name>/<tile_id>_<name>.png`` for the composites in :data:`COMPOSITES`
  (true colour, colour infrared, shortwave "agriculture", and the DEM in grey);
* ``processed/plots/<tile_id>_plot.png``: two rows of panels: the three colour composites (with
  a 1 km scale bar) and, for training tiles, the kelp mask over true colour; then NDVI from
  reflectance, the DEM in metres and the QA flags (see :func:`panel_figure`).

The drawing helpers (stretches, composites, overlays) live in :mod:`kelpseg.plotting`. Every
channel is stretched between its own 2nd and 98th percentile computed over *valid* pixels only
(not NaN, not the -32768 fill).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kelpseg.bands import BANDS
from kelpseg.errors import KelpsegError
from kelpseg.io.atomic import atomic_path, safe_child, save_figure
from kelpseg.io.catalog import load_catalog
from kelpseg.io.tiles import read_mask, read_tile
from kelpseg.layout import DataLayout
from kelpseg.parallel import pmap
from kelpseg.plotting import (
    COMPOSITE_TITLES,
    COMPOSITES,
    MASK_ALPHA,
    MASK_COLOR,
    NODATA_COLOR,
    PIXEL_HECTARES,
    add_colorbar,
    add_scale_bar,
    cloud_mask,
    composite,
    hide_ticks,
    mask_overlay,
    ndvi_reflectance,
    percentile_range,
    robust_scale,
    tile_composites,
    to_uint8,
    valid_mask,
)

__all__ = [
    "COMPOSITES",
    "MASK_ALPHA",
    "MASK_COLOR",
    "composite",
    "panel_figure",
    "plot_samples",
    "plot_tile",
    "robust_scale",
    "select_tiles",
    "to_uint8",
    "valid_mask",
]

#: zlib level of the PNGs: 1 writes ~3x faster than the default 6 for ~20% bigger files.
PNG_COMPRESS_LEVEL = 1


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
def panel_figure(
    tile: np.ndarray,
    mask: np.ndarray | None = None,
    title: str | None = None,
    composites: dict[str, np.ndarray] | None = None,
) -> Any:
    """A two-row matplotlib Figure of a (7, H, W) tile (NaN at fill) and its optional kelp mask.

    Top: the three colour composites (a 1 km scale bar on the true colour) and, for a labelled
    tile, the kelp mask over true colour with its area in hectares. Bottom: NDVI from surface
    reflectance stretched to its own 2-98 percentiles, the DEM in metres, and the QA band; each
    with a colour bar.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    composites = composites or tile_composites(tile)
    ncols = 4 if mask is not None else 3
    # a fixed grid (no constrained layout, which draws the figure twice): faster to save
    fig = Figure(figsize=(3.3 * ncols, 7.0))
    axes = fig.subplots(
        2,
        ncols,
        gridspec_kw={"left": 0.01, "right": 0.95, "bottom": 0.02, "top": 0.9, "wspace": 0.3, "hspace": 0.12},
    )
    for ax, name in zip(axes[0], COMPOSITE_TITLES, strict=False):
        ax.imshow(composites[name], interpolation="nearest")
        ax.set_title(COMPOSITE_TITLES[name], fontsize=9)
    add_scale_bar(axes[0, 0])

    ndvi = ndvi_reflectance(tile)
    vmin, vmax = percentile_range(ndvi)
    cmap = colormaps["RdYlGn"].with_extremes(bad="black")
    im = axes[1, 0].imshow(
        np.ma.masked_invalid(ndvi), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    axes[1, 0].set_title("NDVI (reflectance, 2-98% stretch)", fontsize=9)
    add_colorbar(fig, im, axes[1, 0])

    dem = tile[BANDS.index("DEM")]
    vmin, vmax = percentile_range(dem, 0, 100)
    cmap = colormaps["terrain"].with_extremes(bad=NODATA_COLOR)
    im = axes[1, 1].imshow(
        np.ma.masked_invalid(dem), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    axes[1, 1].set_title(f"Elevation (m; nodata {NODATA_COLOR})", fontsize=9)
    add_colorbar(fig, im, axes[1, 1], label="m")

    qa = tile[BANDS.index("QA")]
    cmap = colormaps["gray"].with_extremes(bad=NODATA_COLOR)
    qa_max = float(np.nanmax(qa)) if np.isfinite(qa).any() else 1.0
    im = axes[1, 2].imshow(np.ma.masked_invalid(qa), cmap=cmap, vmin=0, vmax=max(qa_max, 1.0))
    cloudy = float(cloud_mask(tile).mean() * 100)
    axes[1, 2].set_title(f"Cloud / bad-pixel flag ({cloudy:.0f}% flagged)", fontsize=9)

    if mask is not None:
        kelp = np.asarray(mask).astype(bool)
        axes[0, 3].imshow(composites["tci"], interpolation="nearest")
        axes[0, 3].imshow(mask_overlay(kelp), interpolation="nearest")
        axes[0, 3].set_title(
            f"Kelp mask ({int(kelp.sum())} px = {kelp.sum() * PIXEL_HECTARES:.1f} ha)", fontsize=9
        )
        axes[1, 3].axis("off")
    hide_ticks(axes)
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
