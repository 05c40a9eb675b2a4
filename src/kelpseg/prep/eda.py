"""Exploratory data analysis: per-tile statistics, summary tables, plots and one HTML report.

Input: the AOI table of ``make aoi-grouping`` (``processed/aoi/aoi_groups.parquet``) and the raw
tiles listed by the metadata CSV. Output, under ``processed/eda/``:

* ``dataset_stats.parquet``: one row per tile (train and test). ``all = 350 * 350`` pixels.

  ===========================  =================================================================
  column                       definition
  ===========================  =================================================================
  kelp_pixels                  sum of the mask (train only; NaN for test, as every mask field)
  non_kelp_pixels              all - kelp_pixels
  has_kelp                     kelp_pixels > 0
  kelp_pixels_pct              kelp_pixels / all (a fraction in [0, 1], like every ``_pct``)
  high_kelp_pixels_pct         kelp_pixels_pct > 0.4 (mislabelled tiles; the split drops them)
  dem_nan_pixels               DEM < 0, which is the -32768 fill (DEM nodata)
  dem_has_nans                 dem_nan_pixels > 0
  dem_zero_pixels              DEM == 0 (sea level)
  water_pixels                 DEM <= 0 (sea level and DEM nodata, which lies offshore)
  almost_all_water             water_pixels_pct > 0.98
  qa_corrupted_pixels          QA != 0; equals the reference's sum of the 0/1 QA band, and also
                               counts fill or other non-zero QA codes as corrupt
  qa_ok                        qa_corrupted_pixels == 0
  high_corrupted_pixels_pct    qa_corrupted_pixels_pct > 0.4
  ===========================  =================================================================

* ``desc_stats.parquet`` (pandas ``describe`` of the numeric columns, per split and overall),
  ``split_distribution.parquet``, ``qa_issues_proportion.parquet``,
  ``kelp_presence_proportion.parquet``;
* PNG plots and ``eda.html``, a self-contained page (images inlined) that shows them all.

A tile whose spectral bands are entirely nodata keeps its row and is reported in a warning.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kelpseg.bands import BAND_INDEX, FILL_VALUE, SPECTRAL_BANDS, TILE_PIXELS
from kelpseg.errors import KelpsegError, StageNotRunError, run_hint
from kelpseg.io.atomic import save_figure, stage_outputs, write_parquet, write_text
from kelpseg.io.catalog import load_catalog
from kelpseg.io.tiles import read_mask, read_raw_tile, read_tile
from kelpseg.layout import DataLayout
from kelpseg.parallel import pmap
from kelpseg.plotting import PIXEL_HECTARES

log = logging.getLogger(__name__)

HIGH_KELP_PCT = 0.4
ALMOST_ALL_WATER_PCT = 0.98
HIGH_CORRUPTED_PCT = 0.4

#: Columns of ``dataset_stats.parquet``, in order.
STATS_COLUMNS: tuple[str, ...] = (
    "tile_id",
    "aoi_id",
    "split",
    "kelp_pixels",
    "non_kelp_pixels",
    "has_kelp",
    "kelp_pixels_pct",
    "high_kelp_pixels_pct",
    "dem_nan_pixels",
    "dem_has_nans",
    "dem_nan_pixels_pct",
    "dem_zero_pixels",
    "dem_zero_pixels_pct",
    "water_pixels",
    "water_pixels_pct",
    "almost_all_water",
    "qa_corrupted_pixels",
    "qa_ok",
    "qa_corrupted_pixels_pct",
    "high_corrupted_pixels_pct",
)
MASK_COLUMNS = ("kelp_pixels", "non_kelp_pixels", "has_kelp", "kelp_pixels_pct", "high_kelp_pixels_pct")
_MASK_BOOL_COLUMNS = ("has_kelp", "high_kelp_pixels_pct")
_SPECTRAL = [BAND_INDEX[b] for b in SPECTRAL_BANDS]


@dataclass(frozen=True)
class EdaResult:
    """Where the EDA stage wrote its outputs."""

    stats_path: Path
    tables: dict[str, Path]
    plots: dict[str, Path]
    html_path: Path
    n_tiles: int
    all_nodata_tiles: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [self.stats_path, *self.tables.values(), *self.plots.values(), self.html_path]


# --------------------------------------------------------------------------------------------------
# Per-tile statistics
# --------------------------------------------------------------------------------------------------
def tile_stats(image_path: str, mask_path: str | None) -> dict[str, float | bool | None]:
    """Stats of one tile from its raw integer bands (and its mask when ``mask_path`` is given)."""
    raw = read_raw_tile(image_path)
    dem = raw[BAND_INDEX["DEM"]]
    qa = raw[BAND_INDEX["QA"]]
    dem_nan = int(np.count_nonzero(dem < 0))
    dem_zero = int(np.count_nonzero(dem == 0))
    water = dem_nan + dem_zero
    qa_bad = int(np.count_nonzero(qa))
    row: dict[str, float | bool | None] = {
        "dem_nan_pixels": dem_nan,
        "dem_has_nans": dem_nan > 0,
        "dem_nan_pixels_pct": dem_nan / TILE_PIXELS,
        "dem_zero_pixels": dem_zero,
        "dem_zero_pixels_pct": dem_zero / TILE_PIXELS,
        "water_pixels": water,
        "water_pixels_pct": water / TILE_PIXELS,
        "almost_all_water": water / TILE_PIXELS > ALMOST_ALL_WATER_PCT,
        "qa_corrupted_pixels": qa_bad,
        "qa_ok": qa_bad == 0,
        "qa_corrupted_pixels_pct": qa_bad / TILE_PIXELS,
        "high_corrupted_pixels_pct": qa_bad / TILE_PIXELS > HIGH_CORRUPTED_PCT,
        "all_nodata": bool((raw[_SPECTRAL] == FILL_VALUE).all()),
    }
    if mask_path is None:
        row.update(dict.fromkeys(MASK_COLUMNS))
    else:
        kelp = int(np.count_nonzero(read_mask(mask_path)))
        row.update(
            kelp_pixels=kelp,
            non_kelp_pixels=TILE_PIXELS - kelp,
            has_kelp=kelp > 0,
            kelp_pixels_pct=kelp / TILE_PIXELS,
            high_kelp_pixels_pct=kelp / TILE_PIXELS > HIGH_KELP_PCT,
        )
    return row


def _tile_stats_job(job: tuple[str, str | None]) -> dict[str, float | bool | None]:
    return tile_stats(*job)


def _require(path: Path, command: str, target: str) -> None:
    if not path.exists():
        raise StageNotRunError.missing(path, command, target)


def tiles_with_aoi(layout: DataLayout) -> pd.DataFrame:
    """The catalog joined with the AOI table; every catalog tile must have an aoi_id."""
    if not layout.root.is_dir():
        raise KelpsegError(
            f"{layout.root}: data directory not found"
            if not layout.root.exists()
            else f"{layout.root}: is a file, expected the data directory"
        )
    _require(layout.aoi_table, "aoi-grouping", "aoi-grouping")
    aoi = pd.read_parquet(layout.aoi_table)
    missing_cols = {"tile_id", "aoi_id"} - set(aoi.columns)
    if missing_cols:
        raise KelpsegError(
            f"{layout.aoi_table}: expected columns tile_id, split, aoi_id, usable; "
            f"missing {sorted(missing_cols)}: run {run_hint('aoi-grouping', 'aoi-grouping')} again"
        )
    catalog = load_catalog(layout)
    tiles = catalog.merge(aoi[["tile_id", "aoi_id"]], on="tile_id", how="left", validate="one_to_one")
    lacking = tiles.loc[tiles["aoi_id"].isna(), "tile_id"].tolist()
    if lacking:
        raise StageNotRunError(
            f"{layout.aoi_table} has no aoi_id for {len(lacking)} tile(s) of the metadata "
            f"(e.g. {', '.join(lacking[:5])}): run {run_hint('aoi-grouping', 'aoi-grouping')} again"
        )
    tiles["aoi_id"] = tiles["aoi_id"].astype("int64")
    return tiles


def compute_tile_stats(
    tiles: pd.DataFrame, workers: int = 2, progress: bool = True
) -> tuple[pd.DataFrame, list[str]]:
    """Per-tile stats table for ``tiles`` (columns tile_id, aoi_id, split, image_path, mask_path).

    Returns the table (columns :data:`STATS_COLUMNS`) and the ids of entirely-nodata tiles.
    """
    jobs = [
        (str(img), None if split == "test" or mask is None else str(mask))
        for img, mask, split in zip(tiles["image_path"], tiles["mask_path"], tiles["split"], strict=True)
    ]
    rows = pmap(_tile_stats_job, jobs, workers=workers, progress=progress, desc="eda")
    stats = pd.DataFrame(rows, index=tiles.index)
    stats.insert(0, "tile_id", tiles["tile_id"].to_numpy())
    stats.insert(1, "aoi_id", tiles["aoi_id"].to_numpy())
    stats.insert(2, "split", tiles["split"].to_numpy())
    nodata = stats.loc[stats["all_nodata"], "tile_id"].tolist()
    stats = stats.loc[:, list(STATS_COLUMNS)]
    for col in MASK_COLUMNS:
        dtype = "boolean" if col in _MASK_BOOL_COLUMNS else "float64"
        stats[col] = stats[col].astype(dtype)
    return stats.reset_index(drop=True), nodata


# --------------------------------------------------------------------------------------------------
# Summary tables
# --------------------------------------------------------------------------------------------------
def _counts(df: pd.DataFrame, by: list[str], within: str | None = None) -> pd.DataFrame:
    out = df.groupby(by, dropna=False, observed=True).size().rename("tiles").reset_index()
    total = out.groupby(within)["tiles"].transform("sum") if within else out["tiles"].sum()
    out["share"] = out["tiles"] / total
    return out


def summary_tables(stats: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The four summary tables, keyed by their file stem."""
    numeric = stats.drop(columns=["aoi_id"]).select_dtypes(include="number")
    parts = [numeric.describe().T.assign(split="all")]
    for split, group in stats.groupby("split"):
        parts.append(group[numeric.columns].describe().T.assign(split=split))
    desc = pd.concat(parts).rename_axis("column").reset_index()
    desc = desc[["split", "column", *[c for c in desc.columns if c not in ("split", "column")]]]
    train = stats[stats["split"] == "train"].copy()
    train["has_kelp"] = train["has_kelp"].astype(bool)
    return {
        "desc_stats": desc,
        "split_distribution": _counts(stats, ["split"]),
        "qa_issues_proportion": _counts(stats, ["split", "qa_ok"], within="split"),
        "kelp_presence_proportion": _counts(train, ["has_kelp"]),
    }


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------
_SPLIT_COLOURS = {"train": "#1f77b4", "test": "#ff7f0e"}
#: Columns of the correlation plot: shares and flags (each count is its share times a constant).
CORR_COLUMNS: tuple[str, ...] = (
    "kelp_pixels_pct",
    "has_kelp",
    "high_kelp_pixels_pct",
    "dem_nan_pixels_pct",
    "dem_has_nans",
    "dem_zero_pixels_pct",
    "water_pixels_pct",
    "almost_all_water",
    "qa_corrupted_pixels_pct",
    "qa_ok",
    "high_corrupted_pixels_pct",
)


def _fig(ncols: int = 1, width: float = 6.4) -> tuple[object, object]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.2), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _log_y(ax: object) -> None:
    """Log y axis with plain-number tick labels (10, 100, not 10^1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _hist_by_split(ax: object, stats: pd.DataFrame, column: str, bins: np.ndarray) -> None:
    """One step histogram per split, as the share of that split's tiles (splits differ in size)."""
    for split in ("train", "test"):
        values = stats.loc[stats["split"] == split, column].to_numpy(dtype=float)
        if values.size == 0:
            continue
        ax.hist(
            values,
            bins=bins,
            weights=np.full(values.size, 1.0 / values.size),
            histtype="step",
            linewidth=1.8,
            label=f"{split} (n={values.size})",
            color=_SPLIT_COLOURS[split],
        )
    ax.legend()


def _plot_kelp_pixels(stats: pd.DataFrame) -> object:
    train = stats[stats["split"] == "train"]
    kelp = train["kelp_pixels"].to_numpy(dtype=float)
    fig, ax = _fig()
    bins = np.linspace(0, max(kelp.max(initial=0.0), 1.0), 51)
    ax.hist(kelp, bins=bins, color=_SPLIT_COLOURS["train"])
    _log_y(ax)
    ax.axvline(
        HIGH_KELP_PCT * TILE_PIXELS,
        color="red",
        linestyle="--",
        label=f"high-kelp threshold ({HIGH_KELP_PCT:.0%} of the tile)",
    )
    ax.legend()
    ax.set_xlabel("kelp pixels per tile")
    ax.set_ylabel("train tiles (log scale)")
    ax.set_title(
        f"Kelp pixels per train tile (n={len(kelp)}, median {np.median(kelp) if len(kelp) else 0:.0f})"
    )
    return fig


def _plot_kelp_pct(stats: pd.DataFrame) -> object:
    train = stats[stats["split"] == "train"]
    pct = train["kelp_pixels_pct"].to_numpy(dtype=float)
    positive = pct[pct > 0]
    fig, ax = _fig()
    lo = max(positive.min(initial=1.0) if positive.size else 1e-5, 1.0 / TILE_PIXELS)
    bins = np.logspace(np.log10(lo), 0, 41)
    ax.hist(positive, bins=bins, color=_SPLIT_COLOURS["train"])
    ax.set_xscale("log")
    ax.axvline(HIGH_KELP_PCT, color="red", linestyle="--", label=f"high-kelp threshold ({HIGH_KELP_PCT:.0%})")
    ax.set_xlabel("kelp share of the tile's pixels (log scale)")
    ax.set_ylabel("train tiles")
    ax.set_title(f"Kelp share per train tile with kelp ({positive.size} of {pct.size} tiles have kelp)")
    ax.legend()
    return fig


def _plot_share_by_split(stats: pd.DataFrame, column: str, what: str) -> object:
    fig, axes = _fig(2)
    bins = np.linspace(0, 1, 41)
    _hist_by_split(axes[0], stats, column, bins)
    axes[0].set_xlabel(f"{what} share of the tile")
    axes[0].set_ylabel("share of the split's tiles")
    axes[0].set_title(f"{what[0].upper()}{what[1:]} share per tile, all tiles")
    affected = stats[stats[column] > 0]
    _hist_by_split(axes[1], affected, column, bins)
    axes[1].set_xlabel(f"{what} share of the tile")
    axes[1].set_ylabel("share of the split's affected tiles")
    axes[1].set_title(f"Only tiles with some {what} pixels (n={len(affected)} of {len(stats)})")
    return fig


#: Tile flags of the split-balance plot and their plain labels; a leading ``~`` counts the tiles
#: where the column is False (``qa_ok`` False = some pixels flagged by the QA band).
_FLAG_LABELS = {
    "~qa_ok": "some QA-flagged pixels",
    "high_corrupted_pixels_pct": f"over {HIGH_CORRUPTED_PCT:.0%} QA-flagged",
    "dem_has_nans": "some DEM nodata",
    "almost_all_water": f"over {ALMOST_ALL_WATER_PCT:.0%} water",
}


def _flag(group: pd.DataFrame, spec: str) -> pd.Series:
    """The boolean flag ``spec`` of :data:`_FLAG_LABELS` per tile."""
    values = group[spec.lstrip("~")].astype("boolean").fillna(False).astype(bool)
    return ~values if spec.startswith("~") else values


def _plot_split_balance(stats: pd.DataFrame) -> object:
    fig, axes = _fig(3, width=5.0)
    splits = ["train", "test"]
    counts = stats["split"].value_counts().reindex(splits, fill_value=0)
    axes[0].bar(splits, counts.to_numpy(), color=[_SPLIT_COLOURS[s] for s in splits])
    for i, c in enumerate(counts.to_numpy()):
        axes[0].text(i, c, str(c), ha="center", va="bottom")
    axes[0].set_ylabel("tiles")
    axes[0].set_title("Tiles per split")

    width = 0.38
    x = np.arange(len(_FLAG_LABELS))
    for j, split in enumerate(splits):
        group = stats[stats["split"] == split]
        share = [100 * _flag(group, f).mean() if len(group) else 0.0 for f in _FLAG_LABELS]
        bars = axes[1].bar(x + (j - 0.5) * width, share, width, label=split, color=_SPLIT_COLOURS[split])
        axes[1].bar_label(bars, fmt="%.0f", fontsize=8)
    axes[1].set_xticks(x, list(_FLAG_LABELS.values()), rotation=20, ha="right")
    axes[1].set_ylim(0, 110)
    axes[1].set_yticks([0, 25, 50, 75, 100])
    axes[1].set_ylabel("share of the split's tiles (%)")
    axes[1].set_title("Tile flags by split")
    axes[1].legend()

    train = stats[stats["split"] == "train"]
    high = train["high_kelp_pixels_pct"].astype(bool)
    has = train["has_kelp"].astype(bool)
    labels = ["no kelp", "kelp", "kelp > 40%\n(dropped)"]
    values = [int((~has).sum()), int((has & ~high).sum()), int(high.sum())]
    axes[2].bar(labels, values, color=["#999999", "#2ca02c", "#d62728"])
    for i, c in enumerate(values):
        axes[2].text(i, c, str(c), ha="center", va="bottom")
    axes[2].set_ylabel("train tiles")
    axes[2].set_title("Kelp presence in train tiles (test has no masks)")
    return fig


def _plot_aoi_sizes(stats: pd.DataFrame) -> object:
    sizes = stats.groupby("aoi_id").size().to_numpy()
    fig, axes = _fig(2)
    bins = np.arange(1, sizes.max(initial=1) + 2) - 0.5
    axes[0].hist(sizes, bins=bins, color="#9467bd")
    _log_y(axes[0])
    axes[0].set_xlabel("tiles per AOI")
    axes[0].set_ylabel("AOIs (log scale)")
    axes[0].set_title(f"Tiles per AOI, all {len(sizes)} AOIs")
    multi = sizes[sizes > 1]
    axes[1].hist(multi, bins=bins, color="#9467bd")
    axes[1].set_xlabel("tiles per AOI")
    axes[1].set_ylabel("AOIs")
    axes[1].set_title(f"Tiles per AOI, the {len(multi)} AOIs with more than one tile")
    return fig


def _plot_corr(stats: pd.DataFrame) -> object:
    train = stats[stats["split"] == "train"]
    cols = list(CORR_COLUMNS)
    corr = train[cols].astype(float).corr()
    fig, ax = _fig()
    fig.set_size_inches(8.5, 7.5)
    im = ax.imshow(corr.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(cols)), cols, fontsize=8)
    values = corr.to_numpy()
    for i in range(len(cols)):
        for j in range(len(cols)):
            if np.isfinite(values[i, j]):
                colour = "white" if abs(values[i, j]) > 0.6 else "black"
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Pearson correlation")
    ax.set_title(f"Correlation of the per-tile stats, train tiles (n={len(train)}; blank: constant column)")
    return fig


#: file stem -> (builder, caption); the order is the order of the HTML page.
PLOTS = {
    "kelp_pixels_distribution": (
        _plot_kelp_pixels,
        "Kelp pixels per training tile. Most tiles hold little kelp; the long tail is what the "
        "weighted sampler and the high-kelp filter deal with.",
    ),
    "kelp_pixels_pct_distribution": (
        _plot_kelp_pct,
        "Kelp share of the tile for training tiles that contain kelp, on a log axis. Tiles right of the "
        "dashed line (over 40% kelp) are mislabelled and dropped by the split.",
    ),
    "dem_nan_pixels_distribution": (
        lambda s: _plot_share_by_split(s, "dem_nan_pixels_pct", "DEM nodata"),
        "Share of each tile where the DEM has no data (beyond its coverage offshore), as the share of each "
        "split's tiles so train and test compare directly. Left: all tiles; right: only tiles with some "
        "DEM nodata.",
    ),
    "qa_corrupted_pixels_distribution": (
        lambda s: _plot_share_by_split(s, "qa_corrupted_pixels_pct", "QA-corrupted"),
        "Share of each tile flagged by the QA band (cloud or corrupt), as the share of each split's tiles. "
        "Left: all tiles; right: only tiles with some QA-flagged pixels. Tiles over 40% are flagged "
        "high_corrupted_pixels_pct.",
    ),
    "split_balance": (
        _plot_split_balance,
        "Split balance: tiles per split, the share of tiles with each quality flag in each split, and "
        "kelp presence among training tiles.",
    ),
    "aoi_size_distribution": (
        _plot_aoi_sizes,
        "Tiles per area of interest (AOI group of near-duplicate tiles). Cross-validation keeps each AOI "
        "in one fold, so large AOIs limit how balanced folds can be.",
    ),
}


def _integer_counts(fig: Any) -> None:
    """Whole-number ticks on every axis that counts tiles or pixels (a linear one; not on shares,
    whose axis would otherwise show only 0 and 1)."""
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        for axis, label in ((ax.yaxis, ax.get_ylabel()), (ax.xaxis, ax.get_xlabel())):
            text = label.lower()
            if "share" in text or "%" in text:
                continue
            if axis.get_scale() == "linear" and any(w in text for w in ("tiles", "count", "number")):
                axis.set_major_locator(MaxNLocator(integer=True))


def write_plots(stats: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    plots = {}
    for stem, (builder, _) in PLOTS.items():
        fig = builder(stats)
        _integer_counts(fig)
        plots[stem] = save_figure(out_dir / f"{stem}.png", fig, dpi=110)
    return plots


# --------------------------------------------------------------------------------------------------
# HTML page
# --------------------------------------------------------------------------------------------------
_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f2f2f2; }
figure { margin: 1.5em 0; } img { max-width: 100%; } figcaption { color: #555; max-width: 60em; }
"""


def gallery_tiles(stats: pd.DataFrame) -> dict[str, str]:
    """Training tiles worth looking at: the most kelp, a median kelp tile, one without kelp, the cloudiest.

    "most kelp" and "median": among the tiles with kelp that the split keeps (tiles over the
    high-kelp threshold are mislabelled and dropped, so they would show a label error, not a kelp
    forest); "no kelp": the clearest tile without kelp. A label is left out when no tile fits it;
    ties go to the smallest id.
    """
    train = stats[stats["split"] == "train"].sort_values("tile_id")
    if train.empty:
        return {}
    kelp = train["kelp_pixels"].astype(float)
    dropped = train["high_kelp_pixels_pct"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    out: dict[str, str] = {}
    with_kelp = train[(kelp > 0).to_numpy() & ~dropped]
    if not with_kelp.empty:
        k = with_kelp["kelp_pixels"].astype(float)
        out["most kelp"] = str(with_kelp.loc[k.idxmax(), "tile_id"])
        median = float(np.median(k))
        out["median kelp"] = str(with_kelp.loc[(k - median).abs().idxmin(), "tile_id"])
    without = train[kelp == 0]
    if not without.empty:
        out["no kelp"] = str(without.loc[without["qa_corrupted_pixels"].astype(float).idxmin(), "tile_id"])
    cloudy = train["qa_corrupted_pixels"].astype(float)
    if cloudy.max() > 0:
        out["cloudiest"] = str(train.loc[cloudy.idxmax(), "tile_id"])
    return out


def gallery_figure(tiles: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> Any:
    """One column per gallery tile: true colour, and the same with the kelp mask overlaid."""
    from matplotlib.figure import Figure

    from kelpseg.plotting import add_scale_bar, hide_ticks, mask_overlay, tile_composites

    fig = Figure(figsize=(3.0 * max(len(tiles), 1), 6.4), layout="constrained")
    axes = fig.subplots(2, max(len(tiles), 1), squeeze=False)
    for col, (label, (tile, mask)) in enumerate(tiles.items()):
        rgb = tile_composites(tile)["tci"]
        axes[0, col].imshow(rgb, interpolation="nearest")
        axes[0, col].set_title(label, fontsize=9)
        add_scale_bar(axes[0, col])
        axes[1, col].imshow(rgb, interpolation="nearest")
        if mask is not None:
            axes[1, col].imshow(mask_overlay(mask), interpolation="nearest")
            kelp = int(np.asarray(mask).astype(bool).sum())
            axes[1, col].set_title(
                f"kelp {kelp * PIXEL_HECTARES:.1f} ha ({kelp / TILE_PIXELS:.1%})", fontsize=9
            )
    hide_ticks(axes)
    return fig


def write_gallery(
    stats: pd.DataFrame, tiles: pd.DataFrame, out_dir: Path
) -> tuple[Path | None, dict[str, str]]:
    """``gallery.png`` of :func:`gallery_tiles` (``tiles``: tile_id, image_path, mask_path)."""
    chosen = gallery_tiles(stats)
    if not chosen:
        return None, {}
    paths = tiles.set_index("tile_id")
    images = {}
    for label, tid in chosen.items():
        mask_path = paths.loc[tid, "mask_path"]
        mask = read_mask(mask_path) if isinstance(mask_path, str) and Path(mask_path).exists() else None
        images[f"{label}: {tid}"] = (read_tile(paths.loc[tid, "image_path"]), mask)
    return save_figure(out_dir / "gallery.png", gallery_figure(images), dpi=90), chosen


def _overview(stats: pd.DataFrame, nodata: list[str]) -> pd.DataFrame:
    """Plain-language facts about the dataset: counts, areas in hectares, shares in %."""
    train = stats[stats["split"] == "train"]
    kelp = train["kelp_pixels"].astype(float)
    n_train = max(len(train), 1)
    rows = [
        ("train tiles", len(train)),
        ("test tiles", int((stats["split"] == "test").sum())),
        ("AOI groups (all tiles)", stats["aoi_id"].nunique()),
        ("AOI groups (train tiles)", train["aoi_id"].nunique()),
        ("train tiles with kelp", int(train["has_kelp"].astype(bool).sum())),
        ("train tiles with kelp (%)", round(100 * float(train["has_kelp"].astype(bool).sum()) / n_train, 1)),
        (
            "kelp area per train tile: mean (ha)",
            round(float(kelp.mean()) * PIXEL_HECTARES, 2) if len(kelp) else 0,
        ),
        (
            "kelp area per train tile: median (ha)",
            round(float(kelp.median()) * PIXEL_HECTARES, 2) if len(kelp) else 0,
        ),
        ("kelp area of all train tiles (ha)", round(float(kelp.sum()) * PIXEL_HECTARES, 1)),
        ("kelp share of train pixels (%)", round(100 * float(kelp.sum()) / (n_train * TILE_PIXELS), 3)),
        ("train tiles with > 40% kelp (dropped by the split)", int(train["high_kelp_pixels_pct"].sum())),
        ("tiles with QA-flagged pixels", int((~stats["qa_ok"]).sum())),
        ("tiles with DEM nodata", int(stats["dem_has_nans"].sum())),
        ("almost all water (> 98%)", int(stats["almost_all_water"].sum())),
        ("tiles entirely nodata", len(nodata)),
    ]
    return pd.DataFrame(rows, columns=["quantity", "value"])


def _number(x: float) -> str:
    """Counts with thousands separators, shares with 4 significant digits."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=_number, na_rep="", border=0)


#: Plain labels for the summary tables' columns and flag values.
_LABELS = {
    "qa_ok": "no cloud / bad pixel",
    "has_kelp": "kelp present",
    "tiles": "tiles",
    "share": "share (%)",
}


#: Plain names of the per-tile statistics in the descriptive table (shares become %).
_STAT_LABELS = {
    "kelp_pixels": "kelp (px)",
    "non_kelp_pixels": "not kelp (px)",
    "kelp_pixels_pct": "kelp share (%)",
    "dem_nan_pixels": "DEM nodata (px)",
    "dem_nan_pixels_pct": "DEM nodata share (%)",
    "dem_zero_pixels": "DEM at sea level (px)",
    "dem_zero_pixels_pct": "DEM at sea level share (%)",
    "water_pixels": "water (px)",
    "water_pixels_pct": "water share (%)",
    "qa_corrupted_pixels": "QA-flagged (px)",
    "qa_corrupted_pixels_pct": "QA-flagged share (%)",
}


def plain_desc_stats(desc: pd.DataFrame) -> pd.DataFrame:
    """The descriptive statistics with plain row names, shares in % and whole-number counts."""
    out = desc.copy()
    numeric = [c for c in out.columns if c not in ("column", "count")]
    share = out["column"].str.endswith("_pct")
    out.loc[share, numeric] = out.loc[share, numeric] * 100
    out["column"] = out["column"].map(_STAT_LABELS).fillna(out["column"].str.replace("_", " "))
    if "count" in out.columns:
        out["count"] = out["count"].astype(int)
    return out.rename(columns={"column": "per tile", "count": "tiles"})


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in ("qa_ok", "has_kelp"):
        if col in out.columns:
            out[col] = out[col].map({True: "yes", False: "no"}).fillna(out[col])
    if "share" in out.columns:
        out["share"] = (100 * out["share"]).round(1)
    return out.rename(columns=_LABELS)


def render_html(
    stats: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    plots: dict[str, Path],
    nodata: list[str],
    synthetic: bool = False,
    gallery: Path | None = None,
    gallery_ids: dict[str, str] | None = None,
) -> str:
    """One self-contained page: overview, summary tables and every plot (inlined PNG)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>kelpseg EDA</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Kelp Wanted dataset: exploratory data analysis</h1>",
        "<p>Per-tile statistics of every tile. One pixel is 30 m &times; 30 m = 0.09 ha; a tile is "
        "350&times;350 pixels (1,102 ha). Kelp fields exist for training tiles only.</p>",
        "<h2>Overview</h2>",
        _table_html(_overview(stats, nodata)),
    ]
    if synthetic:
        parts.insert(
            3,
            "<p style='background:#fff3cd;padding:0.6em;border:1px solid #e0c060'><b>Synthetic data.</b> "
            "These tiles were generated by <code>kelpseg synth</code> (a <code>truth/</code> folder lies "
            "beside <code>raw/</code>); nothing here describes real Landsat scenes.</p>",
        )
    if gallery is not None:
        data = base64.b64encode(gallery.read_bytes()).decode("ascii")
        ids = ", ".join(f"{k}: {v}" for k, v in (gallery_ids or {}).items())
        parts.append(
            "<h2>Gallery</h2><figure id='gallery'>"
            f"<img alt='gallery' src='data:image/png;base64,{data}'><figcaption>Training tiles with the "
            f"most kelp, the median kelp area, no kelp and the most cloud ({html.escape(ids)}); bottom row: "
            "the kelp mask in cyan.</figcaption></figure>"
        )
    if nodata:
        parts.append(f"<p><b>Entirely nodata tiles:</b> {html.escape(', '.join(nodata))}</p>")
    parts += ["<h2>Tiles per split</h2>", _table_html(_plain(tables["split_distribution"]))]
    parts += ["<h2>Cloud / bad pixels per split</h2>", _table_html(_plain(tables["qa_issues_proportion"]))]
    parts += ["<h2>Kelp presence (train)</h2>", _table_html(_plain(tables["kelp_presence_proportion"]))]
    parts.append("<h2>Plots</h2>")
    for stem, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = html.escape(PLOTS[stem][1])
        parts.append(
            f"<figure id='{stem}'><img alt='{stem}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{caption}</figcaption></figure>"
        )
    desc = tables["desc_stats"]
    parts += [
        "<h2>Descriptive statistics</h2><p>All tiles; mask fields over training tiles only. "
        "Counts in pixels (1 px = 0.09 ha), shares in % of the tile. desc_stats.parquet holds "
        "them per split too, under the column names.</p>",
        _table_html(plain_desc_stats(desc[desc["split"] == "all"].drop(columns="split"))),
    ]
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------
def write_eda_outputs(
    stats: pd.DataFrame,
    out_dir: Path,
    nodata: Sequence[str] = (),
    synthetic: bool = False,
    tiles: pd.DataFrame | None = None,
) -> EdaResult:
    """Write every EDA output for an already computed stats table (``tiles``: paths for the gallery)."""
    stats_path = write_parquet(out_dir / "dataset_stats.parquet", stats)
    tables = summary_tables(stats)
    table_paths = {stem: write_parquet(out_dir / f"{stem}.parquet", df) for stem, df in tables.items()}
    plots = write_plots(stats, out_dir)
    gallery, gallery_ids = write_gallery(stats, tiles, out_dir) if tiles is not None else (None, {})
    if gallery is not None:
        plots = {"gallery": gallery, **plots}
    page = render_html(
        stats,
        tables,
        {k: v for k, v in plots.items() if k != "gallery"},
        list(nodata),
        synthetic,
        gallery,
        gallery_ids,
    )
    html_path = write_text(out_dir / "eda.html", page)
    return EdaResult(stats_path, table_paths, plots, html_path, len(stats), list(nodata))


def run_eda(layout: DataLayout, workers: int = 2, progress: bool = True) -> EdaResult:
    """Compute the per-tile stats of every tile and write tables, plots and ``eda.html``.

    Needs the AOI table of ``kelpseg aoi-grouping``; raises StageNotRunError when it is missing.
    """
    tiles = tiles_with_aoi(layout)
    stats, nodata = compute_tile_stats(tiles, workers=workers, progress=progress)
    if nodata:
        log.warning("%d tile(s) entirely nodata (kept in the stats): %s", len(nodata), ", ".join(nodata))
    synthetic = layout.truth.is_dir()  # kelpseg.synthetic writes truth/ beside raw/
    with stage_outputs(layout.eda_dir, "eda", "eda"):  # split refuses a half-written set
        return write_eda_outputs(stats, layout.eda_dir, nodata, synthetic=synthetic, tiles=tiles)
