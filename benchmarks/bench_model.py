"""Preparation-stage, training and inference benchmarks on the synthetic benchmark dataset."""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

from bench_data import bench_tile_read, ensure_dataset
from kelpseg.layout import DataLayout
from kelpseg.recipes import train_recipe

DEMO = train_recipe("cpu-demo")
BEST = train_recipe("best")


def _prepared(data_dir: Path, args: argparse.Namespace) -> DataLayout:
    """Dataset with AOI table, EDA, band stats and a 5-fold split (made once per benchmark run)."""
    from kelpseg.prep.aoi import group_aois
    from kelpseg.prep.band_stats import compute_band_stats
    from kelpseg.prep.eda import run_eda
    from kelpseg.prep.split import make_cv_split

    layout = ensure_dataset(data_dir, args)
    if not layout.split_path("cross_val").exists():
        group_aois(layout, progress=False)
        run_eda(layout, progress=False)
        compute_band_stats(layout, progress=False)
        make_cv_split(layout, n_splits=5)
    return layout


def bench_aoi_grouping(data_dir: Path, args: argparse.Namespace) -> dict:
    from kelpseg.prep.aoi import aoi_agreement, group_aois

    layout = ensure_dataset(data_dir, args)
    start = time.perf_counter()
    result = group_aois(layout, progress=False)
    seconds = time.perf_counter() - start
    n = len(result.table)
    return {
        "n_tiles": n,
        "seconds_per_1000_tiles": round(1000 * seconds / n, 2),
        "ari_vs_truth": round(aoi_agreement(layout)["ari"], 4),
    }


def bench_band_stats(data_dir: Path, args: argparse.Namespace) -> dict:
    """Band stats (bands only, the best model's 17 indices, every index) vs the raw read rate."""
    from kelpseg.features.indices import BEST_INDICES
    from kelpseg.prep.band_stats import compute_band_stats

    layout = ensure_dataset(data_dir, args)
    read = bench_tile_read(data_dir, args)
    out = {"raw_read_tiles_per_s_1w": read["tiles_per_s"]}
    for label, indices in (("bands_only", []), ("best17", list(BEST_INDICES)), ("all_indices", None)):
        start = time.perf_counter()
        stats, _ = compute_band_stats(layout, indices=indices, workers=2, progress=False)
        out[f"{label}_tiles_per_s_2w"] = round(stats.n_tiles / (time.perf_counter() - start), 1)
    out["n_train_tiles"] = stats.n_tiles
    return out


def _train(layout: DataLayout, config: Path, sets: list[str]) -> dict:
    import json

    from kelpseg.train.config import load_config
    from kelpseg.train.run import train

    out_dir = layout.root / "bench-runs"
    cfg = load_config(config, [f"data_dir={layout.root}", f"output_dir={out_dir}", "mlflow=false", *sets])
    run_dir = train(cfg, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    # Steady state: the last epoch's rate (the first one pays for worker start-up and warm-up).
    with open(run_dir / "metrics.csv") as fh:
        last = list(csv.DictReader(fh))[-1]
    return {"run_dir": run_dir, **summary, "last_epoch_samples_per_s": float(last["train_samples_per_s"])}


def bench_train(data_dir: Path, args: argparse.Namespace) -> dict:
    """Training samples/s: the demo recipe and UNet + tu-efficientnet_b5 at 352 px, ± decoded cache."""
    layout = _prepared(data_dir, args)
    out: dict = {}
    for cache in (False, True):
        tag = "cache" if cache else "geotiff"
        demo = _train(
            layout, DEMO, ["epochs=2", "samples_per_epoch=128", f"use_cache={cache}", "limit_val_batches=1"]
        )
        out[f"demo_{tag}_samples_per_s"] = demo["last_epoch_samples_per_s"]
        b5 = _train(
            layout,
            BEST,
            [
                "epochs=2",
                "batch_size=4",
                "samples_per_epoch=12",
                "encoder_weights=null",
                "precision=32-true",
                f"use_cache={cache}",
                "limit_val_batches=1",
                "num_workers=2",
            ],
        )
        out[f"effnet_b5_352_{tag}_samples_per_s"] = b5["last_epoch_samples_per_s"]
    shutil.rmtree(layout.root / "bench-runs", ignore_errors=True)
    return out


def bench_inference(data_dir: Path, args: argparse.Namespace) -> dict:
    """Inference tiles/s including reading and writing files: fp32 vs bf16, with and without TTA."""
    from kelpseg.infer.predict import InferenceOptions, predict_folder

    layout = _prepared(data_dir, args)
    runs = {
        "demo": _train(layout, DEMO, ["epochs=1", "samples_per_epoch=16", "limit_val_batches=1"])["run_dir"],
        "effnet_b5": _train(
            layout,
            BEST,
            [
                "epochs=1",
                "batch_size=2",
                "samples_per_epoch=2",
                "encoder_weights=null",
                "precision=32-true",
                "limit_val_batches=1",
            ],
        )["run_dir"],
    }
    tiles = sorted(layout.test_images.glob("*_satellite.tif"))
    out: dict = {}
    for name, run_dir in runs.items():
        for bf16 in (False, True):
            for tta in (False, True):
                n = 8 if name == "effnet_b5" and tta else 16 if name == "effnet_b5" else len(tiles)
                dest = layout.root / "bench-preds"
                start = time.perf_counter()
                predict_folder(
                    run_dir,
                    tiles[:n],
                    dest,
                    options=InferenceOptions(bf16=bf16, tta=tta, batch_size=4, progress=False),
                )
                key = f"{name}_{'bf16' if bf16 else 'fp32'}_{'tta8' if tta else 'notta'}_tiles_per_s"
                out[key] = round(n / (time.perf_counter() - start), 2)
                shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(layout.root / "bench-runs", ignore_errors=True)
    return out


BENCHMARKS = {
    "aoi_grouping": bench_aoi_grouping,
    "band_stats": bench_band_stats,
    "train": bench_train,
    "inference": bench_inference,
}
