"""``kelpseg run`` (``make run``): the whole job, end to end, with a timed summary.

1. data: use ``data/raw`` when it holds a metadata CSV, else generate the synthetic demo set;
2. check-data, sample plots (a few tiles), AOI grouping, EDA, band stats, CV split;
3. train the chosen recipe on the first folds, fit each run's threshold on its own val fold;
4. the fold ensemble (threshold: the best on the pooled out-of-fold validation counts) predicts
   the test tiles → validated ``submission.tar`` with previews;
5. scores: validation Dice of each fold next to the NDVI-in-water baseline on the same tiles,
   each at the threshold that is best on those tiles (the run's from ``kelpseg eval``, the
   baseline's NDVI threshold fitted there too: like with like); the fold table's ``check``
   column marks a fold below the baseline, and one whose training run was flagged as not
   learning even after ``retry_not_learning`` fallback retries; and — on synthetic data only,
   from ``truth/`` — the test Dice of the submission and of the baseline (its threshold fitted
   on every training tile, as the ensemble's is picked on out-of-fold predictions).

On a CPU the default recipe is the packaged ``cpu-demo`` (:mod:`kelpseg.recipes`) on two folds;
with a GPU it is ``best`` on every fold (the full reproduction on real data).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kelpseg import tracking
from kelpseg.errors import KelpsegError
from kelpseg.io.atomic import write_json
from kelpseg.layout import DataLayout


@dataclass
class PipelineOptions:
    workers: int = 2
    config: Path | None = None  # None: cpu-demo on CPU, best on GPU
    folds: int | None = None  # None: 2 on CPU, every fold on GPU
    n_splits: int = 10
    n_train: int = 300
    n_test: int = 60
    seed: int = 0
    overrides: list[str] = field(default_factory=list)
    progress: bool = True
    #: retries of a fold whose run did not learn, with the fallback recipe (kelpseg.train.health)
    retry_not_learning: int = 1


@dataclass
class PipelineSummary:
    data_dir: Path
    synthetic: bool
    stage_seconds: dict[str, float] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    fold_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "synthetic": self.synthetic,
            "stage_seconds": self.stage_seconds,
            "scores": self.scores,
            "folds": self.fold_rows,
            "outputs": self.outputs,
        }


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def default_recipe(options: PipelineOptions) -> tuple[Path, int | None]:
    gpu = _has_gpu()
    from kelpseg.recipes import resolve_recipe, train_recipe

    config = resolve_recipe(options.config) if options.config else train_recipe("best" if gpu else "cpu-demo")
    folds = options.folds if options.folds is not None else (None if gpu else 2)
    return config, folds


class _Timer:
    def __init__(self, summary: PipelineSummary, say: Callable[[str], None]) -> None:
        self.summary, self.say = summary, say

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.say(f"── {name}")
        start = time.perf_counter()
        yield
        self.summary.stage_seconds[name] = round(time.perf_counter() - start, 1)


#: The fold table's mark of a fold whose validation Dice is below the NDVI baseline's.
BELOW_BASELINE = "BELOW NDVI BASELINE"


def fold_check(val_dice: float, baseline_dice: float, learning: str) -> str:
    """``ok``, or what is wrong with a fold: below the NDVI baseline and/or not learning."""
    from kelpseg.train.health import NOT_LEARNING

    marks = [BELOW_BASELINE] if val_dice < baseline_dice else []
    if learning == NOT_LEARNING:
        marks.append("NOT LEARNING")
    return "; ".join(marks) or "ok"


def _train_fold(
    config: Any, retries: int, progress: bool, say: Callable[[str], None]
) -> tuple[Path, str, int]:
    """Train one fold; retry a run that did not learn with the fallback recipe (up to ``retries``).

    Returns the last run directory, its learning status and the number of retries.
    """
    from kelpseg.distributed.runner import read_summary
    from kelpseg.train.health import fallback_config, is_not_learning
    from kelpseg.train.run import default_run_name, train

    base = config if config.run_name else config.model_copy(update={"run_name": default_run_name(config)})
    run_dir = train(base, progress=progress)
    retried = 0
    while is_not_learning(read_summary(run_dir)) and retried < retries:
        retried += 1
        retry = fallback_config(base, retried)
        say(
            f"warning: fold {base.fold} did not learn ({run_dir}); retry {retried} of {retries} "
            f"with lr {retry.lr:.3g}, seed {retry.seed}"
        )
        run_dir = train(retry, progress=progress)
    status = str((read_summary(run_dir).get("learning") or {}).get("status", ""))
    return run_dir, status, retried


def run_pipeline(
    layout: DataLayout, options: PipelineOptions, say: Callable[[str], None] = print
) -> PipelineSummary:
    """Run every stage; returns (and writes to ``<data>/run-summary.json``) the summary."""
    from kelpseg.evaluate.baseline import fit_ndvi_baseline, score_ndvi_baseline
    from kelpseg.evaluate.evaluate import evaluate_folders
    from kelpseg.infer.predict import InferenceOptions, evaluate_run
    from kelpseg.infer.submission import require_valid_submission
    from kelpseg.infer.workflows import cv_predict
    from kelpseg.io.catalog import load_catalog
    from kelpseg.io.integrity import check_data
    from kelpseg.prep.aoi import aoi_agreement, group_aois
    from kelpseg.prep.band_stats import compute_band_stats
    from kelpseg.prep.eda import run_eda
    from kelpseg.prep.plotting import plot_samples
    from kelpseg.prep.split import make_cv_split
    from kelpseg.train.config import load_config

    w, progress = options.workers, options.progress
    synthetic = not layout.metadata_csv.exists() or layout.truth.exists()
    summary = PipelineSummary(layout.root, synthetic)
    timer = _Timer(summary, say)

    with timer.stage("data"):
        if not layout.metadata_csv.exists():
            from kelpseg.synthetic import generate_dataset

            say(f"no data in {layout.raw}: generating the synthetic demo dataset")
            generate_dataset(
                layout.root, options.n_train, options.n_test, options.seed, workers=w, progress=progress
            )
        report = check_data(layout, workers=w, progress=progress)
        if not report.ok:
            listed = "\n".join(str(p) for p in report.problems[:20])
            raise KelpsegError(
                f"{layout.root}: check-data found {len(report.problems)} problem(s):\n{listed}"
            )
        say(f"{report.n_train} train and {report.n_test} test tiles, data OK")

    with timer.stage("sample plots"):
        summary.outputs["sample plots"] = str(plot_samples(layout, n=6, workers=w, progress=progress))
    with timer.stage("aoi grouping"):
        aoi = group_aois(layout, workers=w, progress=progress)
        summary.scores["aoi_groups"] = aoi.n_groups
        if layout.truth_aoi_table.exists():
            summary.scores["aoi_ari"] = round(aoi_agreement(layout)["ari"], 4)
        summary.outputs["aoi groups"] = str(layout.aoi_table)
    with timer.stage("eda"):
        summary.outputs["eda report"] = str(run_eda(layout, workers=w, progress=progress).html_path)

    config_path, n_folds = default_recipe(options)
    base = load_config(config_path, [f"data_dir={layout.root}", *options.overrides])
    with timer.stage("band stats"):
        _, stats_path = compute_band_stats(
            layout,
            fill_value=base.fill_value_name,
            mask_using_qa=base.mask_using_qa,
            mask_using_water_mask=base.mask_using_water_mask,
            workers=w,
            progress=progress,
        )
        summary.outputs["band stats"] = str(stats_path)
    with timer.stage("cv split"):
        split_path = make_cv_split(layout, n_splits=options.n_splits)
        summary.outputs["cv split"] = str(split_path)

    split = pd.read_parquet(split_path)
    catalog = load_catalog(layout).set_index("tile_id")
    folds = list(range(options.n_splits if n_folds is None else min(n_folds, options.n_splits)))
    run_dirs: list[Path] = []
    learning: dict[int, tuple[str, int]] = {}
    with timer.stage(f"train {len(folds)} fold(s) ({config_path.name})"):
        for k in folds:
            say(f"fold {k}")
            fold_config = load_config(
                config_path, [f"data_dir={layout.root}", f"fold={k}", *options.overrides]
            )
            run_dir, status, retried = _train_fold(fold_config, options.retry_not_learning, progress, say)
            run_dirs.append(run_dir)
            learning[k] = (status, retried)
    inference = InferenceOptions(num_workers=w, progress=progress)
    with timer.stage("validation + thresholds"):
        for k, run_dir in zip(folds, run_dirs, strict=True):
            fitted = evaluate_run(run_dir, layout=layout, options=inference)
            # Like with like: the run's threshold was just picked on its validation tiles, so the
            # baseline's NDVI threshold is picked on the same tiles.
            val_ids = split.loc[split[f"split_{k}"] == "val", "tile_id"]
            base_fit = fit_ndvi_baseline(
                catalog.loc[val_ids, "image_path"].tolist(),
                catalog.loc[val_ids, "mask_path"].tolist(),
                workers=w,
                progress=progress,
            )
            status, retried = learning[k]
            row = {
                "fold": k,
                "val_tiles": len(val_ids),
                "val_dice": round(fitted.dice, 4),
                "ndvi_baseline_val_dice": round(base_fit.train_dice, 4),
                "check": fold_check(fitted.dice, base_fit.train_dice, status),
                "learning": status,
                "retried": retried,
                "threshold": fitted.threshold,
                "ndvi_threshold": base_fit.ndvi_threshold,
                "run_dir": str(run_dir),
            }
            if row["check"] != "ok":
                say(
                    f"warning: fold {k}: {row['check']} (val Dice {row['val_dice']} vs NDVI baseline "
                    f"{row['ndvi_baseline_val_dice']}; run {run_dir})"
                )
            summary.fold_rows.append(row)
    rows = summary.fold_rows
    summary.scores["val_dice_mean"] = round(sum(r["val_dice"] for r in rows) / len(rows), 4)
    summary.scores["ndvi_baseline_val_dice_mean"] = round(
        sum(r["ndvi_baseline_val_dice"] for r in rows) / len(rows), 4
    )

    with timer.stage("predict + ensemble + submission"):
        result = cv_predict(
            run_dirs,
            layout,
            version="run",
            name="run",
            weights="val",
            options=inference,
        )
        require_valid_submission(result.tar, layout)
        summary.outputs["submission"] = str(result.tar)
        summary.outputs["previews"] = str(result.folder / "previews")
        summary.scores["ensemble_threshold"] = result.threshold
        summary.outputs["ensemble weights (per fold)"] = ", ".join(f"{w:.3f}" for w in result.weights)
        summary.outputs["MLflow runs"] = tracking.ui_command_for_run(run_dirs[0]) or "tracking off"

    if layout.truth_test_masks.exists():
        with timer.stage("test score (synthetic truth)"):
            test = evaluate_folders(layout.truth_test_masks, result.predictions, workers=w, progress=progress)
            summary.scores["test_dice"] = round(test.dice, 4)
            all_train = split.loc[split["original_split"] == "train", "tile_id"]
            base_fit = fit_ndvi_baseline(
                catalog.loc[all_train, "image_path"].tolist(),
                catalog.loc[all_train, "mask_path"].tolist(),
                workers=w,
                progress=progress,
            )
            test_ids = sorted(p.name.split("_")[0] for p in layout.truth_test_masks.glob("*_kelp.tif"))
            base_test = score_ndvi_baseline(
                base_fit,
                [str(layout.image_path(t, "test")) for t in test_ids],
                [str(layout.truth_test_masks / f"{t}_kelp.tif") for t in test_ids],
                workers=w,
                progress=progress,
            )
            summary.scores["ndvi_baseline_test_dice"] = round(base_test["dice"], 4)

    summary.outputs["runs"] = ", ".join(str(r) for r in run_dirs)
    out = write_json(layout.root / "run-summary.json", summary.to_dict())
    summary.outputs["summary"] = str(out)
    return summary
