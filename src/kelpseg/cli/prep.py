"""Data-preparation commands: sample plots, AOI grouping, EDA, band statistics, CV split."""

from typing import Annotated, Literal

import typer

from kelpseg.cli.app import app, console
from kelpseg.cli.options import DataDir, Quiet, Workers
from kelpseg.layout import DEFAULT_DATA_DIR, FILL_VALUE_NAMES, SPLIT_STRATEGIES, DataLayout


@app.command("plot-samples")
def plot_samples_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    n: Annotated[
        int | None, typer.Option("--n", min=1, help="Plot at most N tiles (a seeded sample).")
    ] = None,
    tile_id: Annotated[list[str] | None, typer.Option("--tile-id", help="Plot these tiles (repeat).")] = None,
    dpi: Annotated[int, typer.Option(min=10, help="Panel figure resolution.")] = 100,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Composites (true colour, colour infrared, shortwave, DEM) and a panel figure per tile."""
    from kelpseg.prep.plotting import plot_samples

    layout = DataLayout(data_dir)
    out = plot_samples(layout, n=n, tile_ids=tile_id, workers=workers, progress=not quiet, dpi=dpi)
    console.print(f"[green]wrote[/] panel figures to {out} and composites to {layout.composites_dir}")


@app.command("aoi-grouping")
def aoi_grouping_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    threshold: Annotated[float | None, typer.Option(help="DEM similarity needed to link two tiles.")] = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Group tiles showing the same place (same terrain, other dates) so CV folds do not leak."""
    from kelpseg.prep.aoi import aoi_agreement, group_aois

    layout = DataLayout(data_dir)
    result = group_aois(layout, threshold=threshold, workers=workers, progress=not quiet)
    rep = result.report()
    pooled = "pooled in one group" if rep["unplaced_aoi_id"] is not None else "each kept alone"
    unplaced = f"{rep['n_unplaced']} unplaced, {pooled}" if rep["n_unplaced"] else "none unplaced"
    console.print(
        f"[green]{rep['n_groups']} AOI groups[/] over {rep['n_tiles']} tiles "
        f"({rep['n_unusable']} without usable terrain, {unplaced}; largest group {rep['largest_group']}); "
        f"{rep['seconds_per_1000_tiles']:.1f} s per 1,000 tiles"
    )
    console.print(f"wrote {layout.aoi_table} and {layout.aoi_groups_json}")
    if layout.truth_aoi_table.exists():
        agree = aoi_agreement(layout)
        console.print(
            f"against the synthetic truth: ARI {agree['ari']:.4f}, "
            f"{agree['n_groups_found']} groups found vs {agree['n_groups_true']} true"
        )


@app.command("eda")
def eda_cmd(data_dir: DataDir = DEFAULT_DATA_DIR, workers: Workers = 2, quiet: Quiet = False) -> None:
    """Per-tile statistics (kelp, DEM, QA), summary tables, plots and an HTML report."""
    from kelpseg.prep.eda import run_eda

    result = run_eda(DataLayout(data_dir), workers=workers, progress=not quiet)
    console.print(f"[green]EDA[/] of {result.n_tiles} tiles: {result.stats_path}")
    console.print(f"report: {result.html_path}")


@app.command("band-stats")
def band_stats_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    fill_value: Annotated[
        Literal[FILL_VALUE_NAMES],  # type: ignore[valid-type]
        typer.Option(help="nan: masked pixels excluded; 0: counted as zeros."),
    ] = "nan",
    mask_using_qa: Annotated[bool, typer.Option(help="Mask indices where QA flags a pixel.")] = True,
    mask_using_water_mask: Annotated[bool, typer.Option(help="Mask indices on land.")] = True,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Per-channel statistics (7 bands + every spectral index) over the training tiles."""
    from kelpseg.prep.band_stats import compute_band_stats

    stats, path = compute_band_stats(
        DataLayout(data_dir),
        fill_value=fill_value,
        mask_using_qa=mask_using_qa,
        mask_using_water_mask=mask_using_water_mask,
        workers=workers,
        progress=not quiet,
    )
    console.print(
        f"[green]band stats[/] of {len(stats.channels)} channels over {stats.n_tiles} tiles: {path}"
    )


@app.command("split")
def split_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    n_splits: Annotated[int, typer.Option("--n-splits", "-k", min=2, help="Number of CV folds.")] = 10,
    seed: Annotated[int, typer.Option(help="Shuffle seed.")] = 42,
    strategy: Annotated[
        Literal[SPLIT_STRATEGIES],  # type: ignore[valid-type]
        typer.Option(help="cross_val: grouped, stratified K-fold; random: one grouped train/val split."),
    ] = "cross_val",
    train_size: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Train share for the random strategy.")
    ] = 0.95,
) -> None:
    """Stratified K-fold over AOI groups (a group never spans train and val of one fold)."""
    from kelpseg.prep.split import make_cv_split, make_random_split

    layout = DataLayout(data_dir)
    if strategy == "cross_val":
        path = make_cv_split(layout, n_splits=n_splits, seed=seed)
    else:
        path = make_random_split(layout, train_size=train_size, seed=seed)
    console.print(f"[green]split[/] written to {path}")
