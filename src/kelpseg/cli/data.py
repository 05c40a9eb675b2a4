"""Foundation commands: synthetic data, data checks and the whole pipeline."""

from pathlib import Path
from typing import Annotated

import typer

from kelpseg.cli.app import app, console
from kelpseg.cli.options import ConfigOpt, DataDir, Quiet, SetOpt, Workers, forwarded
from kelpseg.cli.tables import print_problems, print_table
from kelpseg.layout import DEFAULT_DATA_DIR, DataLayout


@app.command("synth")
def synth_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    n_train: Annotated[int, typer.Option("--n-train", min=1, help="Training tiles.")] = 300,
    n_test: Annotated[int, typer.Option("--n-test", min=1, help="Test tiles.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    tile_ids_from: Annotated[
        Path | None, typer.Option("--tile-ids-from", help="Take tile ids from a metadata CSV.")
    ] = None,
    preview: Annotated[Path | None, typer.Option(help="Also write a preview PNG here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing raw/ and truth/ data.")] = False,
    max_crop_offset: Annotated[
        int | None,
        typer.Option(
            "--max-crop-offset", min=0, help="Largest crop offset (px) of a date in its AOI, up to 116."
        ),
    ] = None,
    p_chain: Annotated[
        float | None,
        typer.Option("--p-chain", min=0.0, max=1.0, help="Share of AOIs that are chains of crops."),
    ] = None,
    p_dem_misregistration: Annotated[
        float | None,
        typer.Option(
            "--p-dem-misregistration", min=0.0, max=1.0, help="Share of dates whose DEM is shifted 1-2 px."
        ),
    ] = None,
    p_open_water: Annotated[
        float | None,
        typer.Option("--p-open-water", min=0.0, max=1.0, help="Share of AOIs with no land (open water)."),
    ] = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Generate a synthetic dataset in the exact competition layout (with truth/ for evaluation)."""
    from kelpseg.synthetic import SynthConfig, generate_dataset, write_preview

    knobs = {
        "max_crop_offset": max_crop_offset,
        "p_chain": p_chain,
        "p_dem_misregistration": p_dem_misregistration,
        "p_open_water": p_open_water,
    }
    config = SynthConfig(**{k: v for k, v in knobs.items() if v is not None})
    summary = generate_dataset(
        data_dir,
        n_train,
        n_test,
        seed,
        tile_ids_from=tile_ids_from,
        workers=workers,
        progress=not quiet,
        overwrite=overwrite,
        config=config,
    )
    console.print(
        f"[green]wrote[/] {summary.n_train} train + {summary.n_test} test tiles "
        f"({summary.n_aois} AOIs, {summary.n_with_kelp} train tiles with kelp) to {DataLayout(data_dir).raw} "
        f"in {summary.seconds:.1f}s"
    )
    if preview is not None:
        console.print(f"[green]preview[/] {write_preview(data_dir, preview)}")


@app.command("check-data")
def check_data_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    checksums: Annotated[bool, typer.Option("--checksums", help="Also verify md5 and file sizes.")] = False,
    workers: Workers = 2,
    quiet: Quiet = False,
    max_problems: Annotated[int, typer.Option(min=0, help="Print at most this many problems.")] = 200,
) -> None:
    """Verify the data dir: files listed exist, masks present, tiles readable and 7x350x350."""
    from kelpseg.io.integrity import check_data

    report = check_data(DataLayout(data_dir), checksums=checksums, workers=workers, progress=not quiet)
    console.print(
        f"checked {report.n_files_checked} files: {report.n_train} train tiles, {report.n_test} test tiles"
        + (" (with md5/size)" if checksums else "")
    )
    if report.ok:
        console.print("[green]data OK[/]")
        return
    print_problems(report.problems, max_problems)
    console.print(f"[red]{len(report.problems)} problem(s) found[/]")
    raise typer.Exit(1)


@app.command("run")
def run_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    config: ConfigOpt = None,
    folds: Annotated[
        int | None, typer.Option(min=1, help="Folds to train (default: 2 on CPU, all on GPU).")
    ] = None,
    n_splits: Annotated[int, typer.Option(min=2, help="CV folds in the split.")] = 10,
    n_train: Annotated[int, typer.Option(min=1, help="Synthetic train tiles when data/raw is empty.")] = 300,
    n_test: Annotated[int, typer.Option(min=1, help="Synthetic test tiles when data/raw is empty.")] = 60,
    overrides: SetOpt = None,
    workers: Workers = 2,
    retry_not_learning: Annotated[
        int, typer.Option(min=0, help="Retries (half the lr, next seed) of a fold whose run did not learn.")
    ] = 1,
    quiet: Quiet = False,
) -> None:
    """The main job end to end: data, preparation, training, fold ensemble, submission, scores.

    The recipe defaults to cpu-demo on a CPU and best on a GPU.
    """
    from kelpseg.pipeline import PipelineOptions, run_pipeline

    opts = PipelineOptions(
        **forwarded(
            locals(), ("workers", "config", "folds", "n_splits", "n_train", "n_test", "retry_not_learning")
        ),
        overrides=list(overrides or []),
        progress=not quiet,
    )
    summary = run_pipeline(DataLayout(data_dir), opts, say=lambda m: console.print(f"[bold cyan]{m}[/]"))
    print_table("stage times", [{"stage": k, "seconds": v} for k, v in summary.stage_seconds.items()])
    print_table("folds", [{k: v for k, v in r.items() if k != "run_dir"} for r in summary.fold_rows])
    print_table(
        "scores (kelp Dice over all pixels: the competition metric)",
        [{"score": k, "value": v} for k, v in summary.scores.items()],
    )
    for key, value in summary.outputs.items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False, soft_wrap=True)
