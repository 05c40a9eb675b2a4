"""The hyper-parameter sweep command (Ray Tune)."""

from pathlib import Path
from typing import Annotated, Literal

import typer

from kelpseg.cli.app import app, console
from kelpseg.cli.options import OptionalDataDir, Quiet, RayAddress, SetOpt, forwarded
from kelpseg.cli.tables import print_mlflow_hint, print_table
from kelpseg.distributed.space import RUN_OPTION_KEYS, SCHEDULERS, SEARCHES


@app.command("sweep")
def sweep_cmd(
    space: Annotated[
        Path, typer.Option("--space", help="Sweep space YAML, or a packaged space name (cpu-smoke, ...).")
    ],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Base config (default: the space's).")
    ] = None,
    data_dir: OptionalDataDir = None,
    overrides: SetOpt = None,
    num_samples: Annotated[int | None, typer.Option(min=1, help="Trials to sample.")] = None,
    search: Annotated[Literal[SEARCHES] | None, typer.Option(help="How to draw.")] = None,  # type: ignore[valid-type]
    scheduler: Annotated[
        Literal[SCHEDULERS] | None,  # type: ignore[valid-type]
        typer.Option(help="asha stops lagging trials early."),
    ] = None,
    max_concurrent_trials: Annotated[int | None, typer.Option(min=1, help="Trials at once.")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(min=0.0, help="CPUs per trial.")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="GPUs per trial.")] = None,
    ray_address: RayAddress = None,
    storage_path: Annotated[str | None, typer.Option(help="Shared storage for trials (path or URI).")] = None,
    name: Annotated[str | None, typer.Option(help="Sweep name (resume with the same name).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume an interrupted sweep of this name.")] = False,
    quiet: Quiet = False,
) -> None:
    """Hyper-parameter sweep on Ray Tune; trials ranked by validation Dice, tracked in MLflow."""
    from kelpseg.distributed.sweep import run_sweep

    sets = list(overrides or [])
    if data_dir is not None:
        sets.insert(0, f"data_dir={data_dir}")
    result = run_sweep(
        space,
        config,
        **forwarded(locals(), (*RUN_OPTION_KEYS, "ray_address", "storage_path", "name", "resume")),
        overrides=sets,
        progress=not quiet,
    )
    print_table(
        f"sweep {result.name}: trials by {result.metric} ({result.mode}), {result.wall_time_s:.0f} s",
        result.ranked_rows(),
    )
    if result.tracking_uri:
        console.print(
            f"MLflow: {result.tracking_uri} experiment {result.experiment!r}, "
            f"parent run {result.parent_run_id}"
        )
    console.print(f"trials and run dirs: {result.sweep_dir}")
    from kelpseg import tracking

    print_mlflow_hint(tracking.ui_command(result.tracking_uri) if result.tracking_uri else None)
