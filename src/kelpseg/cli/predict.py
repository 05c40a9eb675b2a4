"""Evaluation and prediction commands: thresholds, predictions, ensembles, fold ensembles."""

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kelpseg.cli.app import app, console
from kelpseg.cli.options import (
    INFERENCE_PARAMS,
    BandStatsFile,
    Checkpoint,
    DataDir,
    EnsembleMode,
    EnsembleThreshold,
    OptionalDataDir,
    Previews,
    Quiet,
    ReferenceScore,
    RunDir,
    SubmissionName,
    Threshold,
    Workers,
    parse_weights,
)
from kelpseg.cli.tables import print_table
from kelpseg.layout import DEFAULT_DATA_DIR, DataLayout, RunLayout


def bundled_options(
    params: tuple[tuple[str, object, object], ...],
    build: Callable[[dict[str, Any], dict[str, Any]], Any],
    into: str,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator giving a command the options ``params`` (name, annotation, default), delivered
    as one argument ``into = build(those values, the command's other arguments)``.

    The options are placed before ``--workers`` / ``--quiet``. Commands in these modules do not
    postpone annotations, so the signature holds the real types typer reads.
    """
    names = [name for name, _, _ in params]

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(func)
        kw = inspect.Parameter.KEYWORD_ONLY
        kept = [p.replace(kind=kw) for p in signature.parameters.values() if p.name != into]
        tail = [p for p in kept if p.name in ("workers", "quiet")]
        added = [inspect.Parameter(n, kw, default=d, annotation=a) for n, a, d in params]
        parameters = [p for p in kept if p not in tail] + added + tail

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> None:
            picked = {name: kwargs.pop(name) for name in names}
            func(**{into: build(picked, kwargs)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def _inference_options(picked: dict[str, Any], others: dict[str, Any]) -> Any:
    from kelpseg.infer.predict import InferenceOptions

    return InferenceOptions(
        **picked,
        num_workers=others["workers"],
        progress=not others["quiet"],
        data_dir=others.get("data_dir"),  # a reference run dir finds its stats in <data_dir>/processed
    )


#: ``--checkpoint --tta --tta-merge --bf16 --land-mask --batch-size`` (with ``--workers`` and
#: ``--quiet``) as one ``options: InferenceOptions``, written once for every prediction command.
inference_command = bundled_options(INFERENCE_PARAMS, _inference_options, "options")


@app.command("eval")
@inference_command
def eval_cmd(
    options: Any,
    run_dir: RunDir,
    data_dir: OptionalDataDir = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Score a run on its own validation fold and store the best decision threshold in it."""
    from kelpseg.infer.predict import evaluate_run

    layout = DataLayout(data_dir) if data_dir is not None else None
    res = evaluate_run(run_dir, layout=layout, options=options)
    at_half = res.dice_at(0.5)
    console.print(
        f"[green]val/dice[/] {res.dice:.4f} at threshold {res.threshold:.2f}"
        + (f" ({at_half:.4f} at 0.50)" if at_half is not None else "")
        + f"; stored in {RunLayout(run_dir).threshold}"
    )


@app.command("evaluate")
def evaluate_cmd(
    gt_dir: Annotated[Path, typer.Option("--gt-dir", help="Folder of <tile_id>_kelp.tif ground truth.")],
    preds_dir: Annotated[Path, typer.Option("--preds-dir", help="Folder of predictions (masks or probs).")],
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Threshold for probability predictions.")
    ] = 0.5,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report JSON here.")] = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Competition metric (kelp Dice over all pixels) of a prediction folder, paired by tile id."""
    from kelpseg.evaluate.evaluate import evaluate_folders, write_report

    report = evaluate_folders(gt_dir, preds_dir, threshold=threshold, workers=workers, progress=not quiet)
    print_table("evaluation", [dict(report.scores)])
    out = output or Path(preds_dir) / "evaluation.json"
    write_report(report, out)
    console.print(f"report: {out}")


@app.command("predict")
@inference_command
def predict_cmd(
    options: Any,
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
    options: Any,
    run_dir: RunDir,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    name: SubmissionName = None,
    threshold: Threshold = None,
    previews: Previews = 10,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """One model: predict the test tiles and write a validated submission.tar with previews."""
    from kelpseg.infer.workflows import predict_and_submit

    res = predict_and_submit(run_dir, DataLayout(data_dir), name, threshold, options, previews)
    console.print(f"[green]submission[/] {res.tar} ({res.n_tiles} tiles, threshold {res.threshold})")


@app.command("cv-predict")
@inference_command
def cv_predict_cmd(
    options: Any,
    run_dirs: Annotated[list[Path], typer.Argument(help="Fold run directories.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    preds_name: Annotated[
        str, typer.Option("--preds-name", help="Predictions folder: predictions/<name>/fold=<k>/.")
    ] = "cv",
    name: SubmissionName = None,
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
    mode: EnsembleMode = "soft",
    member_threshold: Annotated[
        float | None, typer.Option(help="Vote mode: threshold of each fold's masks (default: the run's).")
    ] = None,
    order_by_fold: Annotated[
        bool, typer.Option(help="Sort the run dirs by the fold each was trained on (weights follow).")
    ] = False,
    previews: Previews = 10,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Every fold predicts the test tiles; their weighted ensemble becomes a submission."""
    from kelpseg.infer.ensemble import reference_equivalent_threshold
    from kelpseg.infer.workflows import cv_predict, sort_by_fold

    parsed = parse_weights(weights)
    if order_by_fold:
        run_dirs = sort_by_fold(run_dirs)
    if reference_threshold is not None:
        if threshold is not None:
            raise typer.BadParameter("give --threshold or --reference-threshold, not both")
        if isinstance(parsed, str):
            raise typer.BadParameter("--reference-threshold needs numeric --weights (or none)")
        threshold = reference_equivalent_threshold(reference_threshold, parsed or [1.0] * len(run_dirs))
    res = cv_predict(
        run_dirs,
        DataLayout(data_dir),
        preds_name,
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


@app.command("export")
def export_cmd(run_dir: RunDir, checkpoint: Checkpoint = "best") -> None:
    """Export a run's model to ONNX (<run>/export/model.onnx) for fast CPU prediction."""
    from kelpseg.infer.engine import export_onnx
    from kelpseg.train.run import load_run

    result = export_onnx(load_run(run_dir, checkpoint))
    diff = result.info["max_probability_difference"]
    console.print(f"[green]wrote[/] {result.path} (max probability difference to PyTorch {diff:.1e})")


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


@app.command("ensemble")
def ensemble_cmd(
    pred_dirs: Annotated[list[Path], typer.Argument(help="Prediction folders (probabilities or masks).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write the ensemble.")],
    weights: Annotated[str | None, typer.Option(help="Comma list of weights (default: equal).")] = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Threshold on the weighted mean.")] = 0.5,
    mode: EnsembleMode = "soft",
    write_probabilities: Annotated[bool, typer.Option(help="Also write the weighted-mean maps.")] = False,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Weighted average of several prediction folders, then one threshold (or weighted voting)."""
    from kelpseg.infer.ensemble import ensemble_folders

    w = parse_weights(weights)
    if w == "val":
        raise typer.BadParameter("'val' needs run dirs: use `kelpseg cv-predict`", param_hint="--weights")
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
