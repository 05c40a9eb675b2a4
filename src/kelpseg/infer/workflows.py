"""Multi-step inference workflows: single model → submission, fold ensemble → submission.

Each workflow writes one self-describing folder::

    <data>/submissions/<kind>/<name>/
        predictions/            <tile_id>_kelp.tif  (uint8 0/1, the archive's content)
        submission.tar          uncompressed, validated before it is renamed into place
        previews/               true colour with the predicted kelp, for a few tiles
        workflow.json           every option, the run dirs used, weights and threshold

``name`` defaults to a UTC timestamp; the ``repro-*`` make targets pass a fixed name so the
same run dirs always rebuild the same folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from kelpseg.errors import KelpsegError
from kelpseg.evaluate.threshold import best_threshold
from kelpseg.infer.ensemble import ensemble_folders, weights_from_scores
from kelpseg.infer.predict import InferenceOptions, predict_folder
from kelpseg.infer.previews import write_prediction_previews
from kelpseg.infer.submission import write_submission
from kelpseg.io.atomic import ensure_writable, safe_child, write_json
from kelpseg.layout import DataLayout, RunLayout


@dataclass
class SubmissionResult:
    folder: Path
    tar: Path
    predictions: Path
    n_tiles: int
    threshold: float
    weights: list[float] = field(default_factory=list)
    previews: list[Path] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_val_score(run_dir: str | Path) -> float:
    """A run's validation Dice: the fitted-threshold score (``kelpseg eval``) or training's best."""
    files = RunLayout(Path(run_dir))
    fitted = _read_json(files.threshold)
    if fitted and fitted.get("dice") is not None:
        return float(fitted["dice"])
    summary = _read_json(files.summary)
    if summary and summary.get("best_score") is not None:
        return float(summary["best_score"])
    raise KelpsegError(
        f"{run_dir}: no validation score (neither {files.THRESHOLD} nor a best score in {files.SUMMARY})"
    )


def run_threshold(run_dir: str | Path) -> float | None:
    fitted = _read_json(RunLayout(Path(run_dir)).threshold)
    return None if not fitted else float(fitted["threshold"])


def _folder(layout: DataLayout, kind: str, name: str | None) -> Path:
    name = name or datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    return safe_child(layout.submissions / kind, name, "submission name")


def _finish(
    layout: DataLayout,
    folder: Path,
    preds: Path,
    input_dir: Path,
    threshold: float,
    weights: list[float],
    previews: int,
    record: dict[str, Any],
    progress: bool,
) -> SubmissionResult:
    tar = write_submission(preds, layout, folder / "submission.tar")
    truth = layout.truth_test_masks if layout.truth_test_masks.is_dir() else None  # synthetic data
    if truth is not None and input_dir != layout.test_images:
        truth = None
    shown = write_prediction_previews(
        input_dir,
        preds,
        folder / "previews",
        n=previews,
        gt_dir=truth,
        threshold=threshold,
        progress=progress,
    )
    write_json(folder / "workflow.json", record)
    n = sum(1 for _ in preds.glob("*_kelp.tif"))
    return SubmissionResult(folder, tar, preds, n, threshold, weights, shown)


def predict_and_submit(
    run_dir: str | Path,
    layout: DataLayout,
    name: str | None = None,
    threshold: float | None = None,
    options: InferenceOptions | None = None,
    previews: int = 10,
) -> SubmissionResult:
    """One model → ``submissions/single-model/<name>/`` with a validated ``submission.tar``."""
    options = options or InferenceOptions()
    folder = _folder(layout, "single-model", name)
    preds = folder / "predictions"
    result = predict_folder(
        run_dir, layout.test_images, preds, soft=False, threshold=threshold, options=options
    )
    record = {
        "workflow": "predict-and-submit",
        "run_dir": str(run_dir),
        "threshold": result.threshold,
        "threshold_source": result.threshold_source,
        **options.to_dict(),
    }
    return _finish(
        layout,
        folder,
        preds,
        layout.test_images,
        float(result.threshold or 0.5),
        [],
        previews,
        record,
        options.progress,
    )


def pooled_threshold(run_dirs: Sequence[str | Path]) -> tuple[float, float] | None:
    """``(threshold, dice)`` maximising the global Dice of the runs' validation counts pooled.

    Each run's ``threshold.json`` (``kelpseg eval``) holds exact tp/fp/fn/tn per grid value on
    its own validation fold; summed over the folds of a CV they are the out-of-fold counts of the
    whole training set, and their best threshold is the one that maximises the competition metric
    there. None when a run has no such table or the grids differ.
    """
    tables = []
    for run_dir in run_dirs:
        fitted = _read_json(RunLayout(Path(run_dir)).threshold)
        if not fitted or not fitted.get("grid"):
            return None
        table = pd.DataFrame(fitted["grid"])
        if not {"threshold", "tp", "fp", "fn", "tn"} <= set(table.columns):
            return None
        tables.append(table.assign(threshold=table["threshold"].round(6)).set_index("threshold"))
    if not tables or any(not t.index.equals(tables[0].index) for t in tables):
        return None
    total = sum(t[["tp", "fp", "fn", "tn"]] for t in tables).reset_index()
    best = best_threshold(total)
    return best.threshold, best.dice


def resolve_ensemble(
    run_dirs: Sequence[str | Path], weights: Sequence[float] | str | None, threshold: float | None
) -> tuple[list[float], float, str]:
    """Member weights and the ensemble threshold, with where the threshold came from.

    ``weights``: a list, ``"val"`` (min-max of each run's validation Dice to [0.2, 1]) or None
    (all 1). ``threshold``: given; else the best threshold on the runs' pooled out-of-fold
    validation counts (:func:`pooled_threshold`, every run evaluated with ``kelpseg eval``); else
    the weighted mean of the runs' fitted thresholds; else 0.5.
    """
    if isinstance(weights, str):
        if weights != "val":
            raise KelpsegError(f"weights must be numbers or 'val', got {weights!r}")
        w = weights_from_scores([run_val_score(r) for r in run_dirs])
    elif weights is None:
        w = [1.0] * len(run_dirs)
    else:
        w = [float(x) for x in weights]
        if len(w) != len(run_dirs):
            raise KelpsegError(f"{len(w)} weight(s) given for {len(run_dirs)} run dir(s)")
    if threshold is not None:
        return w, float(threshold), "given"
    pooled = pooled_threshold(run_dirs)
    if pooled is not None:
        return w, pooled[0], f"pooled out-of-fold validation counts of the runs (Dice {pooled[1]:.4f})"
    fitted = [run_threshold(r) for r in run_dirs]
    if all(t is not None for t in fitted) and sum(w) > 0:
        mean = sum(wi * ti for wi, ti in zip(w, fitted, strict=True)) / sum(w)  # type: ignore[operator]
        return w, round(mean, 4), "weighted mean of the runs' fitted thresholds"
    return w, 0.5, "default 0.5 (run `kelpseg eval` on each run to fit thresholds)"


def cv_predict(
    run_dirs: Sequence[str | Path],
    layout: DataLayout,
    version: str = "cv",
    name: str | None = None,
    weights: Sequence[float] | str | None = None,
    threshold: float | None = None,
    mode: str = "soft",
    options: InferenceOptions | None = None,
    input_dir: Path | None = None,
    previews: int = 10,
    member_threshold: float | None = None,
) -> SubmissionResult:
    """Every fold model predicts the test tiles (probabilities, or 0/1 labels in ``vote`` mode)
    into ``predictions/<version>/fold=<k>/``; their weighted ensemble becomes
    ``submissions/avg/<name>/`` with a validated ``submission.tar``."""
    if not run_dirs:
        raise KelpsegError("cv-predict needs at least one run dir")
    options = options or InferenceOptions()
    input_dir = input_dir or layout.test_images
    w, t, t_source = resolve_ensemble(run_dirs, weights, threshold)
    folder = _folder(layout, "avg", name)
    versions = safe_child(layout.predictions, version, "predictions version")
    for where in (versions, folder):  # before any model loads
        ensure_writable(where)
    member_dirs = []
    for k, run_dir in enumerate(run_dirs):
        out = versions / f"fold={k}"
        predict_folder(
            run_dir, input_dir, out, soft=(mode == "soft"), threshold=member_threshold, options=options
        )
        member_dirs.append(out)
    preds = folder / "predictions"
    ensemble_folders(
        member_dirs, preds, weights=w, threshold=t, mode=mode, workers=2, progress=options.progress
    )
    record = {
        "workflow": "cv-predict",
        "run_dirs": [str(r) for r in run_dirs],
        "member_predictions": [str(d) for d in member_dirs],
        "weights": w,
        "threshold": t,
        "threshold_source": t_source,
        "mode": mode,
        "member_threshold": member_threshold,
        **options.to_dict(),
    }
    return _finish(layout, folder, preds, input_dir, t, w, previews, record, options.progress)


def run_fold(run_dir: str | Path) -> int:
    """The fold a run was trained on: its config's ``fold`` (``cv_split`` in a reference run)."""
    from kelpseg.layout import detect_run_format

    run_dir = Path(run_dir)
    kind = detect_run_format(run_dir)
    if kind == "reference":
        from kelpseg.reference.config import read_reference_config
        from kelpseg.reference.rundir import ReferenceRunLayout

        return int(read_reference_config(ReferenceRunLayout(run_dir).config).config.fold)
    if kind is None:
        raise KelpsegError(f"{run_dir}: not a run directory (no config.yaml, model/ or artifacts/)")
    from kelpseg.train.config import TrainConfig

    return int(TrainConfig.from_yaml(RunLayout(run_dir).config).fold)


def sort_by_fold(run_dirs: Sequence[str | Path]) -> list[Path]:
    """The run dirs in the order of their folds (0, 1, ...); the same fold twice is an error."""
    folds = {Path(r): run_fold(r) for r in run_dirs}
    seen: dict[int, Path] = {}
    for run, fold in folds.items():
        if fold in seen:
            raise KelpsegError(f"{seen[fold]} and {run} were both trained on fold {fold}")
        seen[fold] = run
    return [seen[k] for k in sorted(seen)]
