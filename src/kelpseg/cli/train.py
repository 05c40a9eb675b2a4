"""Training commands: one fold, or every fold (sequentially or on Ray)."""

from pathlib import Path
from typing import Annotated, Any

import typer

from kelpseg.cli.app import app, console
from kelpseg.cli.options import ConfigOpt, OptionalDataDir, Quiet, RayAddress, SetOpt, forwarded
from kelpseg.cli.tables import print_mlflow_hint, print_table
from kelpseg.layout import RunLayout


def train_config(
    config: Path | None, data_dir: Path | None, overrides: list[str] | None, **fixed: object
) -> Any:
    """The TrainConfig of a command: the YAML, then ``--data-dir`` and fixed options, then ``--set``."""
    from kelpseg.train.config import load_config

    sets = list(overrides or [])
    if data_dir is not None:
        sets.insert(0, f"data_dir={data_dir}")
    sets[:0] = [f"{k}={v}" for k, v in fixed.items() if v is not None]
    return load_config(config, sets)


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    fold: Annotated[int | None, typer.Option("--fold", "-f", min=0, help="CV fold to validate on.")] = None,
    data_dir: OptionalDataDir = None,
    overrides: SetOpt = None,
    resume: Annotated[Path | None, typer.Option(help="Resume an interrupted run directory.")] = None,
    band_stats: Annotated[
        Path | None, typer.Option("--band-stats", help="Band-stats JSON (kelpseg's or the reference's).")
    ] = None,
    split_file: Annotated[
        Path | None, typer.Option("--split-file", help="CV split parquet (kelpseg's or the reference's).")
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config as YAML and exit.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Train one fold; writes a self-contained run directory (config, stats, checkpoints, metrics)."""
    overrides = list(overrides or [])
    overrides += [f"band_stats_path={band_stats}"] if band_stats else []
    overrides += [f"split_path={split_file}"] if split_file else []
    if resume is not None:
        if print_config:
            from kelpseg.train.config import TrainConfig

            typer.echo(TrainConfig.from_yaml(RunLayout(resume).config).to_yaml(), nl=False)
            return
        from kelpseg.train.run import resume as resume_run

        run_dir = resume_run(resume, progress=not quiet)
    else:
        cfg = train_config(config, data_dir, overrides, fold=fold)
        if print_config:
            typer.echo(cfg.to_yaml(), nl=False)
            return
        from kelpseg.train.run import train

        run_dir = train(cfg, progress=not quiet)
    print_run(run_dir)


def print_run(run_dir: Path) -> None:
    import json

    summary = json.loads(RunLayout(run_dir).summary.read_text())
    best = summary.get("best_score")
    best_txt = "n/a" if best is None else f"{best:.4f}"
    console.print(
        f"[green]run[/] {run_dir}: best val/dice {best_txt} after {summary.get('epochs_done')} epoch(s)"
    )
    from kelpseg import tracking

    print_mlflow_hint(tracking.ui_command_for_run(run_dir))


@app.command("train-all-folds")
def train_all_folds_cmd(
    config: ConfigOpt = None,
    folds: Annotated[str | None, typer.Option(help="Comma list of folds (default: every fold).")] = None,
    data_dir: OptionalDataDir = None,
    overrides: SetOpt = None,
    parallel: Annotated[bool, typer.Option(help="Fan the folds out as Ray tasks.")] = False,
    ray_address: RayAddress = None,
    cpus_per_fold: Annotated[float, typer.Option(min=0.0, help="CPUs per fold (parallel).")] = 1.0,
    gpus_per_fold: Annotated[float, typer.Option(min=0.0, help="GPUs per fold (parallel).")] = 0.0,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries of a fold whose worker dies.")] = 2,
    retry_not_learning: Annotated[
        int, typer.Option(min=0, help="Retries (half the lr, next seed) of a fold whose run did not learn.")
    ] = 0,
    quiet: Quiet = False,
) -> None:
    """Train every CV fold (one after another, or in parallel on Ray) and print the fold scores."""
    from kelpseg.distributed.folds import available_folds, train_folds

    cfg = train_config(config, data_dir, overrides)
    try:
        fold_list = [int(f) for f in folds.split(",")] if folds else available_folds(cfg)
    except ValueError:
        raise typer.BadParameter(f"expected a comma list of fold numbers, got {folds!r}") from None
    result = train_folds(
        cfg,
        fold_list,
        **forwarded(
            locals(),
            (
                "parallel",
                "ray_address",
                "cpus_per_fold",
                "gpus_per_fold",
                "max_retries",
                "retry_not_learning",
            ),
        ),
        progress=not quiet,
    )
    mode = "parallel" if result.parallel else "sequential"
    print_table(f"fold scores ({mode}, {result.wall_time_s:.1f} s)", result.rows())
