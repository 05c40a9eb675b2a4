"""The ``kelpseg`` command line: one thin command per pipeline stage.

Commands parse options, call the stage function, and print where the outputs went. User
errors (:class:`kelpseg.errors.KelpsegError`) are printed on one line without a traceback.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kelpseg import tracking
from kelpseg.errors import KelpsegError, exit_for_failure, raise_interrupted_on_sigint
from kelpseg.layout import DEFAULT_DATA_DIR, DataLayout, RunLayout

if TYPE_CHECKING:
    from kelpseg.infer.predict import InferenceOptions

app = typer.Typer(
    name="kelpseg",
    help="Map giant-kelp canopy in Landsat tiles (Kelp Wanted layout): prepare, train, predict, submit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", "-d", help="Data directory (raw/, processed/, predictions/, ...).")
]
Workers = Annotated[int, typer.Option("--workers", "-w", help="Worker processes.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _layout(data_dir: Path) -> DataLayout:
    return DataLayout(data_dir)


# --------------------------------------------------------------------------------------------
# Foundation
# --------------------------------------------------------------------------------------------
@app.command("synth")
def synth_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    n_train: Annotated[int, typer.Option("--n-train", help="Training tiles.")] = 300,
    n_test: Annotated[int, typer.Option("--n-test", help="Test tiles.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    tile_ids_from: Annotated[
        Path | None, typer.Option("--tile-ids-from", help="Take tile ids from a metadata CSV.")
    ] = None,
    preview: Annotated[Path | None, typer.Option(help="Also write a preview PNG here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing raw/ and truth/ data.")] = False,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Generate a synthetic dataset in the exact competition layout (with truth/ for evaluation)."""
    from kelpseg.synthetic import generate_dataset, write_preview

    summary = generate_dataset(
        data_dir,
        n_train,
        n_test,
        seed,
        tile_ids_from=tile_ids_from,
        workers=workers,
        progress=not quiet,
        overwrite=overwrite,
    )
    console.print(
        f"[green]wrote[/] {summary.n_train} train + {summary.n_test} test tiles "
        f"({summary.n_aois} AOIs, {summary.n_with_kelp} train tiles with kelp) to {_layout(data_dir).raw} "
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
    max_problems: Annotated[int, typer.Option(help="Print at most this many problems.")] = 200,
) -> None:
    """Verify the data dir: files listed exist, masks present, tiles readable and 7x350x350."""
    from kelpseg.io.integrity import check_data

    report = check_data(_layout(data_dir), checksums=checksums, workers=workers, progress=not quiet)
    console.print(
        f"checked {report.n_files_checked} files: {report.n_train} train tiles, {report.n_test} test tiles"
        + (" (with md5/size)" if checksums else "")
    )
    if report.ok:
        console.print("[green]data OK[/]")
        return
    for problem in report.problems[:max_problems]:
        console.print(f"[red]✗[/] {problem}", highlight=False, soft_wrap=True)
    if len(report.problems) > max_problems:
        console.print(f"... and {len(report.problems) - max_problems} more")
    console.print(f"[red]{len(report.problems)} problem(s) found[/]")
    raise typer.Exit(1)


@app.command("run")
def run_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Recipe (default: cpu-demo on CPU, best on GPU).")
    ] = None,
    folds: Annotated[int | None, typer.Option(help="Folds to train (default: 2 on CPU, all on GPU).")] = None,
    n_splits: Annotated[int, typer.Option(help="CV folds in the split.")] = 10,
    n_train: Annotated[int, typer.Option(help="Synthetic train tiles when data/raw is empty.")] = 300,
    n_test: Annotated[int, typer.Option(help="Synthetic test tiles when data/raw is empty.")] = 60,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a training option: key=value.")
    ] = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """The main job end to end: data, preparation, training, fold ensemble, submission, scores."""
    from kelpseg.pipeline import PipelineOptions, run_pipeline

    opts = PipelineOptions(
        workers=workers,
        config=config,
        folds=folds,
        n_splits=n_splits,
        n_train=n_train,
        n_test=n_test,
        overrides=list(overrides or []),
        progress=not quiet,
    )
    summary = run_pipeline(_layout(data_dir), opts, say=lambda m: console.print(f"[bold cyan]{m}[/]"))
    print_table("stage times", [{"stage": k, "seconds": v} for k, v in summary.stage_seconds.items()])
    print_table("folds", [{k: v for k, v in r.items() if k != "run_dir"} for r in summary.fold_rows])
    print_table(
        "scores (kelp Dice over all pixels: the competition metric)",
        [{"score": k, "value": v} for k, v in summary.scores.items()],
    )
    for key, value in summary.outputs.items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------
@app.command("plot-samples")
def plot_samples_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    n: Annotated[int | None, typer.Option("--n", help="Plot at most N tiles (a seeded sample).")] = None,
    tile_id: Annotated[list[str] | None, typer.Option("--tile-id", help="Plot these tiles (repeat).")] = None,
    dpi: Annotated[int, typer.Option(help="Panel figure resolution.")] = 100,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Composites (true colour, colour infrared, shortwave, DEM) and a panel figure per tile."""
    from kelpseg.prep.plotting import plot_samples

    out = plot_samples(_layout(data_dir), n=n, tile_ids=tile_id, workers=workers, progress=not quiet, dpi=dpi)
    console.print(
        f"[green]wrote[/] panel figures to {out} and composites to {_layout(data_dir).composites_dir}"
    )


@app.command("aoi-grouping")
def aoi_grouping_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    threshold: Annotated[float | None, typer.Option(help="DEM similarity needed to link two tiles.")] = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Group tiles showing the same place (same terrain, other dates) so CV folds do not leak."""
    from kelpseg.prep.aoi import aoi_agreement, group_aois

    layout = _layout(data_dir)
    result = group_aois(layout, threshold=threshold, workers=workers, progress=not quiet)
    rep = result.report()
    console.print(
        f"[green]{rep['n_groups']} AOI groups[/] over {rep['n_tiles']} tiles "
        f"({rep['n_unusable']} without usable terrain kept alone; largest group {rep['largest_group']}); "
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

    result = run_eda(_layout(data_dir), workers=workers, progress=not quiet)
    console.print(f"[green]EDA[/] of {result.n_tiles} tiles: {result.stats_path}")
    console.print(f"report: {result.html_path}")


@app.command("band-stats")
def band_stats_cmd(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    fill_value: Annotated[str, typer.Option(help="'nan' (masked pixels excluded) or '0'.")] = "nan",
    mask_using_qa: Annotated[bool, typer.Option(help="Mask indices where QA flags a pixel.")] = True,
    mask_using_water_mask: Annotated[bool, typer.Option(help="Mask indices on land.")] = True,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Per-channel statistics (7 bands + every spectral index) over the training tiles."""
    from kelpseg.prep.band_stats import compute_band_stats

    stats, path = compute_band_stats(
        _layout(data_dir),
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
    n_splits: Annotated[int, typer.Option("--n-splits", "-k", help="Number of CV folds.")] = 10,
    seed: Annotated[int, typer.Option(help="Shuffle seed.")] = 42,
    strategy: Annotated[str, typer.Option(help="'cross_val' (grouped, stratified K-fold) or 'random'.")] = (
        "cross_val"
    ),
    train_size: Annotated[float, typer.Option(help="Train share for the random strategy.")] = 0.95,
) -> None:
    """Stratified K-fold over AOI groups (a group never spans train and val of one fold)."""
    from kelpseg.prep.split import make_cv_split, make_random_split

    layout = _layout(data_dir)
    if strategy == "cross_val":
        path = make_cv_split(layout, n_splits=n_splits, seed=seed)
    elif strategy == "random":
        path = make_random_split(layout, train_size=train_size, seed=seed)
    else:
        raise KelpsegError(f"unknown split strategy {strategy!r}; choose 'cross_val' or 'random'")
    console.print(f"[green]split[/] written to {path}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Training config YAML.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config option: key=value (repeat).")
]


def _train_config(config: Path | None, data_dir: Path | None, overrides: list[str] | None, **fixed: object):
    from kelpseg.train.config import load_config

    sets = list(overrides or [])
    if data_dir is not None:
        sets.insert(0, f"data_dir={data_dir}")
    sets[:0] = [f"{k}={v}" for k, v in fixed.items() if v is not None]
    return load_config(config, sets)


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    fold: Annotated[int | None, typer.Option("--fold", "-f", help="CV fold to validate on.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data directory.")] = None,
    overrides: SetOpt = None,
    resume: Annotated[Path | None, typer.Option(help="Resume an interrupted run directory.")] = None,
    band_stats: Annotated[
        Path | None, typer.Option("--band-stats", help="Band-stats JSON (kelpseg's or the reference's).")
    ] = None,
    split_file: Annotated[
        Path | None, typer.Option("--split-file", help="CV split parquet (kelpseg's or the reference's).")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train one fold; writes a self-contained run directory (config, stats, checkpoints, metrics)."""
    from kelpseg.train.run import resume as resume_run
    from kelpseg.train.run import train

    overrides = list(overrides or [])
    overrides += [f"band_stats_path={band_stats}"] if band_stats else []
    overrides += [f"split_path={split_file}"] if split_file else []
    if resume is not None:
        run_dir = resume_run(resume, progress=not quiet)
    else:
        cfg = _train_config(config, data_dir, overrides, fold=fold)
        run_dir = train(cfg, progress=not quiet)
    _print_run(run_dir)


def _print_run(run_dir: Path) -> None:
    import json

    summary = json.loads(RunLayout(run_dir).summary.read_text())
    best = summary.get("best_score")
    best_txt = "n/a" if best is None else f"{best:.4f}"
    console.print(
        f"[green]run[/] {run_dir}: best val/dice {best_txt} after {summary.get('epochs_done')} epoch(s)"
    )
    _print_mlflow_hint(tracking.ui_command_for_run(run_dir))


def _print_mlflow_hint(command: str | None) -> None:
    """The command that opens the MLflow UI on the store the runs went to."""
    if command:
        console.print(f"MLflow runs: {command}", highlight=False, soft_wrap=True)


@app.command("train-all-folds")
def train_all_folds_cmd(
    config: ConfigOpt = None,
    folds: Annotated[str | None, typer.Option(help="Comma list of folds (default: every fold).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data directory.")] = None,
    overrides: SetOpt = None,
    parallel: Annotated[bool, typer.Option(help="Fan the folds out as Ray tasks.")] = False,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address (default: embedded).")
    ] = None,
    cpus_per_fold: Annotated[float, typer.Option(help="CPUs per fold (parallel).")] = 1.0,
    gpus_per_fold: Annotated[float, typer.Option(help="GPUs per fold (parallel).")] = 0.0,
    max_retries: Annotated[int, typer.Option(help="Retries of a fold whose worker dies.")] = 2,
    quiet: Quiet = False,
) -> None:
    """Train every CV fold (one after another, or in parallel on Ray) and print the fold scores."""
    from kelpseg.distributed.folds import available_folds, train_folds

    cfg = _train_config(config, data_dir, overrides)
    fold_list = [int(f) for f in folds.split(",")] if folds else available_folds(cfg)
    result = train_folds(
        cfg,
        fold_list,
        parallel=parallel,
        ray_address=ray_address,
        cpus_per_fold=cpus_per_fold,
        gpus_per_fold=gpus_per_fold,
        max_retries=max_retries,
        progress=not quiet,
    )
    print_table("fold scores", result.rows())


@app.command("sweep")
def sweep_cmd(
    space: Annotated[Path, typer.Option("--space", help="Sweep space YAML (configs/sweeps/<name>.yaml).")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Base config (default: the space's).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data directory.")] = None,
    overrides: SetOpt = None,
    num_samples: Annotated[int | None, typer.Option(help="Trials to sample.")] = None,
    search: Annotated[str | None, typer.Option(help="'random' or 'grid'.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="'fifo' or 'asha' (early stopping).")] = None,
    max_concurrent_trials: Annotated[int | None, typer.Option(help="Trials at once.")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per trial.")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial.")] = None,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address (default: embedded).")
    ] = None,
    storage_path: Annotated[str | None, typer.Option(help="Shared storage for trials (path or URI).")] = None,
    name: Annotated[str | None, typer.Option(help="Sweep name (resume with the same name).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume an interrupted sweep of this name.")] = False,
    quiet: Quiet = False,
) -> None:
    """Hyper-parameter sweep on Ray Tune; trials ranked by validation Dice, tracked in MLflow."""
    from kelpseg.distributed.sweep import print_sweep, run_sweep

    sets = list(overrides or [])
    if data_dir is not None:
        sets.insert(0, f"data_dir={data_dir}")
    result = run_sweep(
        space,
        config,
        num_samples=num_samples,
        search=search,
        scheduler=scheduler,
        max_concurrent_trials=max_concurrent_trials,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        ray_address=ray_address,
        storage_path=storage_path,
        name=name,
        resume=resume,
        overrides=sets,
        progress=not quiet,
    )
    print_sweep(result)
    console.print(f"trials and run dirs: {result.sweep_dir}")
    _print_mlflow_hint(tracking.ui_command(result.tracking_uri) if result.tracking_uri else None)


# --------------------------------------------------------------------------------------------
# Evaluation, prediction, ensembles, submissions
# --------------------------------------------------------------------------------------------
RunDir = Annotated[Path, typer.Option("--run-dir", "-r", help="A training run directory.")]
Checkpoint = Annotated[str, typer.Option(help="'best' or 'last' checkpoint.")]
Tta = Annotated[bool, typer.Option(help="Test-time augmentation (8 flips/rotations).")]
TtaMerge = Annotated[str, typer.Option(help="Merge TTA probabilities: mean, max, min, gmean.")]
Bf16 = Annotated[bool, typer.Option(help="bf16 autocast inference.")]
LandMask = Annotated[bool, typer.Option(help="No kelp where DEM > 0 (land).")]
BatchSize = Annotated[int, typer.Option(help="Tiles per inference batch.")]
BandStatsFile = Annotated[
    Path | None,
    typer.Option(
        "--band-stats",
        help="Reference run dirs: its stats JSON (default: found in <data-dir>/processed/).",
    ),
]
ReferenceScore = Annotated[
    str,
    typer.Option(
        help="Reference run dirs: kelp probability as 'sigmoid' of its kelp logit (as it did) "
        "or 'softmax' of its two logits (the fix; changes predictions)."
    ),
]
Backend = Annotated[
    str,
    typer.Option(
        help="How the model runs: auto (ONNX Runtime on a CPU, PyTorch on a GPU), eager, "
        "channels_last, compile, onnx."
    ),
]
Threshold = Annotated[
    float | None, typer.Option(help="Decision threshold (default: the run's fitted one, else 0.5).")
]
EnsembleThreshold = Annotated[
    float | None,
    typer.Option(
        help="Ensemble threshold (default: the best on the runs' pooled out-of-fold validation "
        "counts from `kelpseg eval`, else the mean of their fitted thresholds, else 0.5)."
    ),
]


_INFERENCE_PARAMS: tuple[tuple[str, object, object], ...] = (
    ("checkpoint", Checkpoint, "best"),
    ("tta", Tta, False),
    ("tta_merge", TtaMerge, "mean"),
    ("bf16", Bf16, False),
    ("land_mask", LandMask, False),
    ("batch_size", BatchSize, 8),
    ("band_stats", BandStatsFile, None),
    ("reference_score", ReferenceScore, "sigmoid"),
    ("backend", Backend, "auto"),
)


def inference_command(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the shared inference options, delivered as one ``options`` argument.

    The command declares ``options: InferenceOptions`` (plus ``workers`` and ``quiet``); the
    command line gets ``--checkpoint --tta --tta-merge --bf16 --land-mask --batch-size`` and
    the wrapper builds the :class:`~kelpseg.infer.predict.InferenceOptions` from them, so the
    option list is written once for ``eval``, ``predict``, ``predict-and-submit`` and ``cv-predict``.
    """
    signature = inspect.signature(func)  # ``options`` names a type imported only for checking
    kept = [
        p.replace(annotation=eval(p.annotation, func.__globals__)) if isinstance(p.annotation, str) else p
        for p in signature.parameters.values()
        if p.name != "options"
    ]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, annotation, default in _INFERENCE_PARAMS
    ]
    tail = [p for p in kept if p.name in ("workers", "quiet")]
    head = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept if p not in tail]
    tail = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in tail]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        from kelpseg.infer.predict import InferenceOptions

        picked = {name: kwargs.pop(name) for name, _, _ in _INFERENCE_PARAMS}
        data_dir = kwargs.get("data_dir")  # a reference run dir finds its stats in <data_dir>/processed
        options = InferenceOptions(
            **picked, num_workers=kwargs["workers"], progress=not kwargs["quiet"], data_dir=data_dir
        )
        func(options=options, **kwargs)

    parameters = head + added + tail
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


@app.command("eval")
@inference_command
def eval_cmd(
    options: InferenceOptions,
    run_dir: RunDir,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data directory.")] = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Score a run on its own validation fold and store the best decision threshold in it."""
    from kelpseg.infer.predict import evaluate_run

    layout = _layout(data_dir) if data_dir is not None else None
    res = evaluate_run(run_dir, layout=layout, options=options)
    at_half = res.dice_at(0.5)
    console.print(
        f"[green]val/dice[/] {res.dice:.4f} at threshold {res.threshold:.2f}"
        + (f" ({at_half:.4f} at 0.50)" if at_half is not None else "")
        + f"; stored in {RunLayout(run_dir).threshold}"
    )


# ---- export (begin) -------------------------------------------------------------------------
@app.command("export")
def export_cmd(
    run_dir: RunDir,
    checkpoint: Checkpoint = "best",
) -> None:
    """Export a run's model to ONNX (<run>/export/model.onnx) for fast CPU prediction."""
    from kelpseg.infer.engine import export_onnx
    from kelpseg.train.run import load_run

    result = export_onnx(load_run(run_dir, checkpoint))
    diff = result.info["max_probability_difference"]
    console.print(f"[green]wrote[/] {result.path} (max probability difference to PyTorch {diff:.1e})")


# ---- export (end) ---------------------------------------------------------------------------


@app.command("evaluate")
def evaluate_cmd(
    gt_dir: Annotated[Path, typer.Option("--gt-dir", help="Folder of <tile_id>_kelp.tif ground truth.")],
    preds_dir: Annotated[Path, typer.Option("--preds-dir", help="Folder of predictions (masks or probs).")],
    threshold: Annotated[float, typer.Option(help="Threshold for probability predictions.")] = 0.5,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report JSON here.")] = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Competition metric (kelp Dice over all pixels) of a prediction folder, paired by tile id."""
    from kelpseg.evaluate.evaluate import evaluate_folders, write_report

    report = evaluate_folders(gt_dir, preds_dir, threshold=threshold, workers=workers, progress=not quiet)
    print_table("evaluation", [{k: v for k, v in report.scores.items()}])
    out = output or Path(preds_dir) / "evaluation.json"
    write_report(report, out)
    console.print(f"report: {out}")


@app.command("predict")
@inference_command
def predict_cmd(
    options: InferenceOptions,
    run_dir: RunDir,
    input_dir: Annotated[Path, typer.Option("--input-dir", "-i", help="Folder of *_satellite.tif tiles.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write <tile>_kelp.tif.")],
    soft: Annotated[bool, typer.Option(help="Write float32 probabilities instead of 0/1 masks.")] = False,
    threshold: Threshold = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", "-d", help="Reference run dirs: data dir whose processed/ holds its stats."
        ),
    ] = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Predict a folder of tiles with a trained run (masks or probability maps)."""
    from kelpseg.infer.predict import predict_folder

    res = predict_folder(run_dir, input_dir, output_dir, soft=soft, threshold=threshold, options=options)
    what = "probability maps" if soft else f"masks (threshold {res.threshold}, {res.threshold_source})"
    console.print(f"[green]wrote[/] {res.n_tiles} {what} to {output_dir} in {res.seconds:.1f}s")


@app.command("predict-and-submit")
@inference_command
def predict_and_submit_cmd(
    options: InferenceOptions,
    run_dir: RunDir,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    name: Annotated[str | None, typer.Option(help="Submission folder name (default: UTC time).")] = None,
    threshold: Threshold = None,
    previews: Annotated[int, typer.Option(help="Preview PNGs to write.")] = 10,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """One model: predict the test tiles and write a validated submission.tar with previews."""
    from kelpseg.infer.workflows import predict_and_submit

    res = predict_and_submit(run_dir, _layout(data_dir), name, threshold, options, previews)
    console.print(f"[green]submission[/] {res.tar} ({res.n_tiles} tiles, threshold {res.threshold})")


@app.command("cv-predict")
@inference_command
def cv_predict_cmd(
    options: InferenceOptions,
    run_dirs: Annotated[list[Path], typer.Argument(help="Fold run directories.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    version: Annotated[str, typer.Option(help="Name of predictions/<version>/fold=<k>/.")] = "cv",
    name: Annotated[str | None, typer.Option(help="Submission folder name (default: UTC time).")] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="Comma list of weights, or 'val' (from validation Dice); default equal."),
    ] = None,
    threshold: EnsembleThreshold = None,
    reference_threshold: Annotated[
        float | None,
        typer.Option(
            help="A threshold as the reference's averaging script applied it (its divisor "
            "sum(w) + w_first restated on the true weighted mean); instead of --threshold."
        ),
    ] = None,
    mode: Annotated[
        str, typer.Option(help="'soft' (average probabilities) or 'vote' (hard labels).")
    ] = "soft",
    member_threshold: Annotated[
        float | None, typer.Option(help="Vote mode: threshold of each fold's masks (default: the run's).")
    ] = None,
    order_by_fold: Annotated[
        bool, typer.Option(help="Sort the run dirs by the fold each was trained on (weights follow).")
    ] = False,
    previews: Annotated[int, typer.Option(help="Preview PNGs to write.")] = 10,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Every fold predicts the test tiles; their weighted ensemble becomes a submission."""
    from kelpseg.infer.ensemble import reference_equivalent_threshold
    from kelpseg.infer.workflows import cv_predict, sort_by_fold

    parsed = _parse_weights(weights)
    if order_by_fold:
        run_dirs = sort_by_fold(run_dirs)
    if reference_threshold is not None:
        if threshold is not None:
            raise KelpsegError("give --threshold or --reference-threshold, not both")
        if isinstance(parsed, str):
            raise KelpsegError("--reference-threshold needs numeric --weights (or none)")
        threshold = reference_equivalent_threshold(reference_threshold, parsed or [1.0] * len(run_dirs))
    res = cv_predict(
        run_dirs,
        _layout(data_dir),
        version,
        name,
        parsed,
        threshold,
        mode,
        options,
        previews=previews,
        member_threshold=member_threshold,
    )
    console.print(
        f"[green]submission[/] {res.tar} ({res.n_tiles} tiles, "
        f"weights {', '.join(f'{w:.3f}' for w in res.weights)}, threshold {res.threshold})"
    )


@app.command("import-run")
def import_run_cmd(
    ref_dir: Annotated[Path, typer.Argument(help="A run directory of the reference solution.")],
    out_dir: Annotated[Path, typer.Argument(help="The kelpseg run directory to create.")],
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", "-d", help="Data dir whose processed/ holds its stats JSON.")
    ] = None,
    band_stats: BandStatsFile = None,
    reference_score: ReferenceScore = "sigmoid",
) -> None:
    """Convert a reference run (Azure ML export or MLflow run) into a kelpseg run directory."""
    from kelpseg.reference.importer import import_run

    out = import_run(ref_dir, out_dir, data_dir=data_dir, band_stats=band_stats, score=reference_score)
    console.print(f"[green]imported[/] {ref_dir} -> {out}")


def _parse_weights(weights: str | None) -> list[float] | str | None:
    if weights is None or weights == "val":
        return weights
    try:
        return [float(w) for w in weights.split(",")]
    except ValueError:
        raise KelpsegError(f"--weights must be a comma list of numbers or 'val', got {weights!r}") from None


@app.command("ensemble")
def ensemble_cmd(
    pred_dirs: Annotated[list[Path], typer.Argument(help="Prediction folders (probabilities or masks).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write the ensemble.")],
    weights: Annotated[str | None, typer.Option(help="Comma list of weights (default: equal).")] = None,
    threshold: Annotated[float, typer.Option(help="Threshold on the weighted mean.")] = 0.5,
    mode: Annotated[str, typer.Option(help="'soft' or 'vote'.")] = "soft",
    write_probabilities: Annotated[bool, typer.Option(help="Also write the weighted-mean maps.")] = False,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Weighted average of several prediction folders, then one threshold (or weighted voting)."""
    from kelpseg.infer.ensemble import ensemble_folders

    w = _parse_weights(weights)
    if w == "val":
        raise KelpsegError("--weights val needs run dirs: use `kelpseg cv-predict`")
    res = ensemble_folders(
        pred_dirs,
        output_dir,
        weights=w,
        threshold=threshold,
        mode=mode,
        write_probabilities=write_probabilities,
        workers=workers,
        progress=not quiet,
    )
    console.print(f"[green]ensemble[/] of {len(res.members)} folder(s): {res.n_tiles} tiles in {output_dir}")


@app.command("submission")
def submission_cmd(
    preds_dir: Annotated[Path, typer.Option("--preds-dir", help="Folder of 0/1 <tile_id>_kelp.tif masks.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The .tar to write.")] = None,
    previews: Annotated[int, typer.Option(help="Preview PNGs next to the archive.")] = 10,
    quiet: Quiet = False,
) -> None:
    """Pack the test-tile masks into a validated, uncompressed submission.tar."""
    from kelpseg.infer.previews import write_prediction_previews
    from kelpseg.infer.submission import write_submission

    layout = _layout(data_dir)
    out = output or Path(preds_dir).parent / "submission.tar"
    tar = write_submission(preds_dir, layout, out)
    if previews:
        write_prediction_previews(
            layout.test_images, preds_dir, out.parent / "previews", n=previews, progress=not quiet
        )
    console.print(f"[green]submission[/] {tar}")


@app.command("check-submission")
def check_submission_cmd(
    tar: Annotated[Path, typer.Argument(help="The submission.tar to check.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Check a submission archive: one 350x350 uint8 0/1 mask per test tile, nothing else."""
    from kelpseg.infer.submission import check_submission

    problems = check_submission(tar, _layout(data_dir))
    if not problems:
        console.print(f"[green]{tar}: valid submission[/]")
        return
    for problem in problems:
        console.print(f"[red]✗[/] {problem}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


# ---- whole Landsat scenes (kelpseg.scene) -------------------------------------------------------
def _scene_options(
    options: InferenceOptions,
    window: int | None,
    overlap: float,
    qa_bits: str,
    dem: Path | None,
    aoi: Path | None,
    skip_land: bool,
    min_mapping_unit: int,
    weights: str | None,
    threshold: float | None,
) -> Any:
    from kelpseg.scene.mapping import SceneOptions

    return SceneOptions(
        window_size=window,
        overlap=overlap,
        qa_bits=[b.strip() for b in qa_bits.split(",") if b.strip()],
        dem=dem,
        aoi=aoi,
        skip_land=skip_land,
        min_mapping_unit=min_mapping_unit,
        weights=_parse_weights(weights),
        threshold=threshold,
        inference=options,
    )


SceneRuns = Annotated[
    list[Path], typer.Option("--run-dir", "-r", help="Run dir; repeat for a fold ensemble.")
]
SceneOut = Annotated[
    Path, typer.Option("--output-dir", "-o", help="Where the maps, polygons and summary go.")
]
Window = Annotated[int | None, typer.Option(help="Window size in px (default 350; larger: multiples of 32).")]
Overlap = Annotated[float, typer.Option(help="Window overlap as a fraction (Hann-blended).")]
QaBits = Annotated[
    str, typer.Option(help="QA_PIXEL bits that mark a pixel cloudy (names or numbers, comma list).")
]
DemOpt = Annotated[Path | None, typer.Option(help="DEM raster (any CRS/resolution), reprojected per window.")]
AoiOpt = Annotated[Path | None, typer.Option(help="Area of interest (GeoPackage / GeoJSON polygons).")]
SkipLand = Annotated[bool, typer.Option(help="With a DEM: do not run the model on all-land windows.")]
Mmu = Annotated[int, typer.Option("--min-mapping-unit", help="Smallest kelp polygon kept, in pixels.")]
SceneWeights = Annotated[str | None, typer.Option(help="Ensemble weights: comma list or 'val'.")]


@app.command("scene")
@inference_command
def scene_cmd(
    options: InferenceOptions,
    scene: Annotated[Path, typer.Argument(help="C2 L2 scene folder, .tar, MTL file, or 7-band GeoTIFF.")],
    run_dir: SceneRuns,
    output_dir: SceneOut,
    window: Window = None,
    overlap: Overlap = 0.5,
    qa_bits: QaBits = "cloud,dilated_cloud,shadow,cirrus",
    dem: DemOpt = None,
    aoi: AoiOpt = None,
    skip_land: SkipLand = True,
    min_mapping_unit: Mmu = 2,
    weights: SceneWeights = None,
    threshold: EnsembleThreshold = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Map a whole Landsat scene: probability and kelp COGs, kelp polygons, area summary."""
    from kelpseg.scene.mapping import map_scene

    opts = _scene_options(
        options, window, overlap, qa_bits, dem, aoi, skip_land, min_mapping_unit, weights, threshold
    )
    if dem is None:
        err_console.print("no --dem: the DEM band is nodata (-32768) everywhere", highlight=False)
    res = map_scene(scene, run_dir, output_dir, opts)
    s = res.summary
    console.print(
        f"[green]{res.scene_id}[/] kelp {s['kelp_ha']} ha ({s['n_polygons']} polygons), observed "
        f"{s['observed_clear_ha']} ha, cloud {s['cloud_masked_ha']} ha; {res.n_windows} windows "
        f"({res.n_skipped} skipped) in {res.seconds:.1f} s -> {output_dir}"
    )


@app.command("scene-series")
@inference_command
def scene_series_cmd(
    options: InferenceOptions,
    scenes: Annotated[Path, typer.Argument(help="Folder of scenes (C2 L2 folders, .tar, 7-band .tif).")],
    run_dir: SceneRuns,
    output_dir: SceneOut,
    window: Window = None,
    overlap: Overlap = 0.5,
    qa_bits: QaBits = "cloud,dilated_cloud,shadow,cirrus",
    dem: DemOpt = None,
    aoi: AoiOpt = None,
    skip_land: SkipLand = True,
    min_mapping_unit: Mmu = 2,
    weights: SceneWeights = None,
    threshold: EnsembleThreshold = None,
    ray: Annotated[bool, typer.Option(help="One Ray task per scene.")] = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: embedded).")] = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Map every scene of a folder: one CSV row per scene (and AOI polygon) and a plot."""
    from kelpseg.scene.timeseries import map_series

    opts = _scene_options(
        options, window, overlap, qa_bits, dem, aoi, skip_land, min_mapping_unit, weights, threshold
    )
    csv_path, png, rows = map_series(scenes, run_dir, output_dir, opts, ray=ray, ray_address=ray_address)
    console.print(f"[green]time series[/] {csv_path} ({len(rows)} rows), plot {png}")


@app.command("synth-scene")
def synth_scene_cmd(
    output_dir: SceneOut,
    size: Annotated[int, typer.Option(help="Scene height and width in pixels.")] = 2000,
    dates: Annotated[
        str, typer.Option(help="Comma list of acquisition dates (one scene each).")
    ] = "2020-07-15",
    sensor: Annotated[str, typer.Option(help="TM, ETM+, OLI or OLI-2.")] = "OLI",
    seed: Annotated[int, typer.Option(help="Coast and kelp beds (same seed: same site).")] = 0,
    cloud_fraction: Annotated[float, typer.Option(help="Cloudy share of each scene.")] = 0.1,
) -> None:
    """Write synthetic Landsat C2 L2 scene folders (with true kelp mask and DEM) for demos and tests."""
    import math

    from kelpseg.scene.synthetic import write_synthetic_scene

    for k, date in enumerate(d.strip() for d in dates.split(",") if d.strip()):
        vigour = 0.5 + 0.5 * abs(math.sin(1.3 * k + seed)) if k else 1.0  # canopy varies by date
        sc = write_synthetic_scene(
            output_dir,
            size,
            size,
            seed=seed,
            date=date,
            sensor=sensor,
            cloud_fraction=cloud_fraction,
            kelp_vigour=vigour,
        )
        console.print(f"[green]scene[/] {sc.folder} ({sc.kelp_pixels} true kelp px)")


# ---- end of whole Landsat scenes ----------------------------------------------------------------


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    """Print a list of dicts as a rich table."""
    if not rows:
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(str(key))
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)


def quiet_libraries() -> None:
    """Keep the console for kelpseg's own output: library chatter only at warning level."""
    import logging
    import warnings

    # Lightning and MLflow reset their top loggers to INFO when imported (lazily, after this
    # runs), so the loggers that actually speak are set explicitly too.
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "mlflow",
        "mlflow.store.db.utils",
        "mlflow.tracking.fluent",
        "alembic",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # its only warning is "Experiment ... not found. Creating it." on every first run
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


def main() -> None:
    """Entry point: run the app, turning user errors into one-line messages."""
    raise_interrupted_on_sigint()
    quiet_libraries()
    try:
        app()
    except KelpsegError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except BaseException as exc:  # OS errors, Ctrl-C: one line (kelpseg.errors); bugs re-raised
        exit_for_failure(exc)


if __name__ == "__main__":
    main()
