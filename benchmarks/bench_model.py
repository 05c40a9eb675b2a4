"""Preparation-stage, training and inference benchmarks on the synthetic benchmark dataset."""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from collections.abc import Callable
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


AOI_HARD = {"max_crop_offset": 116, "p_chain": 0.3, "p_dem_misregistration": 0.3, "p_open_water": 0.05}


def bench_aoi_grouping(data_dir: Path, args: argparse.Namespace) -> dict:
    """``group_aois`` (2 workers, from the GeoTIFFs) on generated datasets of ``--aoi-tiles`` sizes
    (default 1,000 and 7,000, the real dataset's size; 80 % train) with the default generator, and
    on 1,000 tiles with revisits at offsets up to a third of a tile, chains, DEM misregistration and
    open water; plus the describe step's CPU ms per tile (one process, 100 tiles). ``ari_vs_truth``
    counts the pooled unplaced group as a merge of the places in it; ``ari_placed_tiles`` leaves it out."""
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    from kelpseg.io.catalog import load_catalog
    from kelpseg.prep.aoi import aoi_agreement, describe_tile, group_aois
    from kelpseg.synthetic import SynthConfig, generate_dataset

    sizes = list(getattr(args, "aoi_tiles", None) or (1000, 7000))
    runs = [(f"default_{n}", n, SynthConfig()) for n in sizes]
    runs.append((f"hard_{min(sizes)}", min(sizes), SynthConfig(**AOI_HARD)))
    out: dict = {}
    for label, n, config in runs:
        root = data_dir.parent / f"aoi-bench-{label}"
        n_train = round(0.8 * n)
        generate_dataset(root, n_train, n - n_train, seed=11, workers=2, progress=False, config=config)
        layout = DataLayout(root)
        start = time.perf_counter()
        result = group_aois(layout, progress=False)
        seconds = time.perf_counter() - start
        agree = aoi_agreement(layout)
        truth = pd.read_csv(layout.truth_aoi_table, dtype={"tile_id": str})
        placed = result.table.merge(truth[["tile_id", "aoi"]], on="tile_id")
        placed = placed[placed["aoi_id"] != result.unplaced_aoi_id]  # the pooled group merges places
        paths = list(load_catalog(layout)["image_path"])[:100]
        cpu = time.process_time()
        for path in paths:
            describe_tile(path)
        cpu_ms = 1000 * (time.process_time() - cpu) / len(paths)
        out[label] = {
            "n_tiles": len(result.table),
            "seconds": round(seconds, 2),
            "seconds_per_1000_tiles": round(1000 * seconds / len(result.table), 2),
            "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
            "describe_cpu_ms_per_tile": round(cpu_ms, 2),
            "ari_vs_truth": round(agree["ari"], 4),
            "ari_placed_tiles": round(float(adjusted_rand_score(placed["aoi"], placed["aoi_id"])), 4),
            "n_groups_found": agree["n_groups_found"],
            "n_groups_true": agree["n_groups_true"],
            "n_unplaced": result.n_unplaced,
        }
        shutil.rmtree(root)
    return out


def _median(values: list[float]) -> float:
    return float(sorted(values)[len(values) // 2])


def bench_band_stats(data_dir: Path, args: argparse.Namespace) -> dict:
    """Band stats with 2 workers (bands + the best recipe's 17 indices; bands + every index) against
    the raw single-process read rate, measured interleaved in this run (medians of the repeats)."""
    from kelpseg.features.indices import BEST_INDICES
    from kelpseg.prep.band_stats import compute_band_stats

    layout = ensure_dataset(data_dir, args)
    compute_band_stats(layout, indices=[], workers=2, progress=False)  # fork server and file cache warm
    rates: dict[str, list[float]] = {"read_1w": [], "best17_2w": [], "all_indices_2w": []}
    for _ in range(args.repeats):
        rates["read_1w"].append(bench_tile_read(data_dir, args)["tiles_per_s"])
        for label, indices in (("best17_2w", list(BEST_INDICES)), ("all_indices_2w", None)):
            start = time.perf_counter()
            stats, _ = compute_band_stats(layout, indices=indices, workers=2, progress=False)
            rates[label].append(stats.n_tiles / (time.perf_counter() - start))
    read = _median(rates["read_1w"])
    out: dict = {"n_train_tiles": stats.n_tiles, "raw_read_tiles_per_s_1w": round(read, 1)}
    for label in ("best17_2w", "all_indices_2w"):
        out[f"{label}_tiles_per_s"] = round(_median(rates[label]), 1)
        out[f"{label}_vs_read"] = round(_median(rates[label]) / read, 2)
    out["repeats"] = {k: [round(v, 1) for v in vs] for k, vs in rates.items()}
    out.update(_band_stats_cpu_time(layout, list(BEST_INDICES)))
    return out


def _band_stats_cpu_time(layout: DataLayout, indices: list[str]) -> dict:
    """CPU seconds per tile of a raw read and of band stats, measured in one process set up as a
    band-stats worker: unlike wall time this does not depend on what else the machine runs, and
    ``2 * read / stats`` is the rate of 2 workers on 2 free cores relative to one process reading."""
    from concurrent.futures import ProcessPoolExecutor

    from kelpseg.io.catalog import train_catalog
    from kelpseg.parallel import process_context

    paths = tuple(str(p) for p in train_catalog(layout)["image_path"])
    with ProcessPoolExecutor(max_workers=1, mp_context=process_context()) as pool:
        read, stats = pool.submit(_worker_cpu_per_tile, paths, indices).result()
    return {
        "read_cpu_ms_per_tile": round(1000 * read, 1),
        "best17_cpu_ms_per_tile": round(1000 * stats, 1),
        "best17_2w_vs_read_on_free_cores": round(2 * read / stats, 2),
    }


def _worker_cpu_per_tile(paths: tuple[str, ...], indices: list[str]) -> tuple[float, float]:
    """(read, band stats incl. read) CPU seconds per tile in this process, as a worker runs them."""
    from threadpoolctl import threadpool_limits

    from kelpseg.io.tiles import read_tile
    from kelpseg.memory import keep_freed_memory
    from kelpseg.prep.band_stats import _Job, _resolve_indices, accumulate

    keep_freed_memory()
    job = _Job(paths, _resolve_indices(indices), "nan", True, True)
    with threadpool_limits(limits=1):
        start = time.process_time()
        for p in paths:
            read_tile(p)
        read = (time.process_time() - start) / len(paths)
        accumulate(job)  # warm: the first batch grows the heap
        start = time.process_time()
        accumulate(job)
        stats = (time.process_time() - start) / len(paths)
    return read, stats


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


#: The reference solution's recipe at a CPU-sized model: UNet + tu-resnet18, 24 channels, batch 4, fp32.
REFERENCE_RECIPE = [
    "encoder=tu-resnet18",
    "encoder_weights=null",
    "precision=32-true",
    "batch_size=4",
    "num_workers=2",
    "limit_val_batches=1",
]


def bench_train(data_dir: Path, args: argparse.Namespace) -> dict:
    """Training samples/s at the reference recipe (best.yaml's 24 channels, UNet + tu-resnet18, batch 4,
    fp32): the old input path (GeoTIFF reads, NCHW, transform in the training step) against the
    default fast path (decoded tile cache, transform in the loader workers) in NCHW and in
    channels-last, interleaved; steady state = the last epoch of each run. ``*_loss_equal``: whether
    the fast path's per-epoch training losses equal the baseline's (same seed)."""
    layout = _prepared(data_dir, args)
    paths = {
        "baseline_geotiff_nchw": ["use_cache=false", "channels_last=false", "transform_in_workers=false"],
        "cache_workers_nchw": ["use_cache=true", "channels_last=false"],
        "cache_workers_channels_last": ["use_cache=true", "channels_last=true"],
    }
    rates: dict[str, list[float]] = {k: [] for k in paths}
    losses: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, sets in paths.items():
            run = _train(layout, BEST, [*REFERENCE_RECIPE, "epochs=2", "samples_per_epoch=16", *sets])
            rates[name].append(run["last_epoch_samples_per_s"])
            with open(run["run_dir"] / "metrics.csv") as fh:
                losses[name] = [row["train/loss"] for row in csv.DictReader(fh)]
    shutil.rmtree(layout.root / "bench-runs", ignore_errors=True)
    base = _median(rates["baseline_geotiff_nchw"])
    out: dict = {
        "recipe": "best.yaml channels, UNet tu-resnet18, batch 4, fp32, 352 px",
        "baseline_samples_per_s": round(base, 3),
    }
    for name in list(paths)[1:]:
        out[f"{name}_samples_per_s"] = round(_median(rates[name]), 3)
        out[f"{name}_vs_baseline"] = round(_median(rates[name]) / base, 2)
        out[f"{name}_loss_equal"] = losses[name] == losses["baseline_geotiff_nchw"]
    out["train_losses"] = losses
    out["repeats"] = {k: [round(v, 3) for v in vs] for k, vs in rates.items()}
    step = _train_step_alone(args.repeats)
    out.update(step)
    fastest = min(step["step_nchw_ms_per_sample"], step["step_channels_last_ms_per_sample"])
    out["ceiling_vs_baseline"] = round(1000 / base / fastest, 2)
    return out


def _train_step_alone(repeats: int) -> dict:
    """The recipe's model and loss alone (best.yaml with the reference recipe's overrides, as
    ``bench_train`` trains it): GFLOP of forward and backward per sample, and ms per sample of
    forward, loss, backward and an AdamW step on a batch (best of ``repeats`` + 1 after a warm-up),
    NCHW and channels-last: what any input pipeline leaves to the model (``ceiling_vs_baseline`` =
    baseline time per sample over it)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kelpseg.train.config import load_config
    from kelpseg.train.losses import create_loss, loss_options
    from kelpseg.train.module import model_from_config

    cfg = load_config(BEST, REFERENCE_RECIPE)
    loss_fn = create_loss(cfg.loss, **loss_options(cfg.to_dict()))
    generator = torch.Generator().manual_seed(0)
    shape = (cfg.batch_size, cfg.in_channels, cfg.image_size, cfg.image_size)
    x = torch.randn(shape, generator=generator)
    y = (torch.rand((cfg.batch_size, 1, cfg.image_size, cfg.image_size), generator=generator) > 0.9).float()
    out: dict = {}
    for layout in ("nchw", "channels_last"):
        torch.manual_seed(0)
        model = model_from_config(cfg)
        xs = x
        if layout == "channels_last":
            model, xs = (
                model.to(memory_format=torch.channels_last),
                x.contiguous(memory_format=torch.channels_last),
            )
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        if layout == "nchw":
            with FlopCounterMode(display=False) as flops:
                loss_fn(model(x[:1]), y[:1]).backward()
            out["step_gflop_per_sample"] = round(flops.get_total_flops() / 1e9, 2)

        def step(
            model: torch.nn.Module = model, xs: torch.Tensor = xs, opt: torch.optim.Optimizer = opt
        ) -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xs), y).backward()
            opt.step()

        step()
        best = min(_timed(step) for _ in range(repeats + 1))
        out[f"step_{layout}_ms_per_sample"] = round(1000 * best / x.shape[0], 1)
    return out


#: Prediction paths timed by bench_inference: InferenceOptions fields of each.
PREDICTION_PATHS: dict[str, dict] = {
    # the input transform in the main process before the model, as the reference's predict.py
    "eager_reference_pipeline": {"backend": "eager", "transform_in_workers": False},
    "eager": {"backend": "eager"},
    "channels_last": {"backend": "channels_last"},
    "onnx": {"backend": "onnx"},  # what --backend auto picks on a CPU
    # bf16 autocast (--bf16, as the reference predicted): timed for the record; its probabilities
    # are outside the 1e-3 tolerance, so no default uses it
    "eager_bf16": {"backend": "eager", "bf16": True},
}


def bench_inference(data_dir: Path, args: argparse.Namespace) -> dict:
    """Prediction tiles/s including reading and writing files, at the reference recipe's model (UNet +
    tu-resnet18, 24 channels, batch 4, fp32), interleaved: eager PyTorch with the transform in the
    main process (the baseline: the reference's pipeline), then the default pipeline (transform in
    the loader workers) with eager, channels-last and ONNX Runtime from the run's `kelpseg export`
    artefact (the default on a CPU); plus the largest probability difference of each path to fp32
    eager over the predicted tiles (all through the default pipeline with 2 workers).

    ``*_vs_eager``: end to end, one ``predict_folder`` call per timing (its fixed cost, ~1 s of
    loader start-up and model loading, included). ``*_steady_vs_eager``: the rate once running,
    ``(n - 4) / (t(n) - t(4))`` from a call on 4 tiles and one on all of them, what a long job
    (a test set, a scene) sees. ``model_*``: the model alone on a batch of 4 at 352 px — its
    floating-point work per tile and the rate of each backend — and ``ceiling_vs_eager``: the
    baseline's steady time per tile over the fastest backend's model time, the most any pipeline
    change can gain without changing the model's arithmetic."""
    import numpy as np

    from kelpseg.infer.engine import export_onnx
    from kelpseg.infer.predict import InferenceOptions, iter_probabilities, predict_folder
    from kelpseg.train.run import load_run

    layout = _prepared(data_dir, args)
    run_dir = _train(layout, BEST, [*REFERENCE_RECIPE, "epochs=1", "samples_per_epoch=8"])["run_dir"]
    export_onnx(load_run(run_dir))
    tiles = sorted(layout.test_images.glob("*_satellite.tif"))[: args.predict_tiles]
    if len(tiles) < 2:
        raise SystemExit(f"inference: needs 2 or more test tiles, found {len(tiles)} (see --n-test)")
    few = min(4, len(tiles) - 1)
    rates: dict[str, list[float]] = {p: [] for p in PREDICTION_PATHS}
    steady: dict[str, list[float]] = {p: [] for p in PREDICTION_PATHS}
    for _ in range(args.repeats):
        for name, fields in PREDICTION_PATHS.items():
            seconds = {}
            for n in (few, len(tiles)):
                dest = layout.root / "bench-preds"
                start = time.perf_counter()
                opts = InferenceOptions(batch_size=4, progress=False, **fields)
                predict_folder(run_dir, tiles[:n], dest, options=opts)
                seconds[n] = time.perf_counter() - start
                shutil.rmtree(dest, ignore_errors=True)
            rates[name].append(len(tiles) / seconds[len(tiles)])
            steady[name].append((len(tiles) - few) / (seconds[len(tiles)] - seconds[few]))
    run = load_run(run_dir)
    probs = {}
    for name, fields in PREDICTION_PATHS.items():
        opts = InferenceOptions(batch_size=4, progress=False, **fields)
        probs[name] = np.concatenate([p for _, p, _ in iter_probabilities(run, tiles[:8], opts)])
    model = _model_alone(run, args.repeats)
    shutil.rmtree(layout.root / "bench-runs", ignore_errors=True)
    base = _median(rates["eager_reference_pipeline"])
    base_steady = _median(steady["eager_reference_pipeline"])
    out: dict = {"model": "UNet tu-resnet18, 24 channels, batch 4, fp32", "n_tiles": len(tiles)}
    out["eager_reference_pipeline_tiles_per_s"] = round(base, 2)
    out["eager_reference_pipeline_steady_tiles_per_s"] = round(base_steady, 2)
    for name in list(PREDICTION_PATHS)[1:]:
        out[f"{name}_tiles_per_s"] = round(_median(rates[name]), 2)
        out[f"{name}_vs_eager"] = round(_median(rates[name]) / base, 2)
        out[f"{name}_steady_tiles_per_s"] = round(_median(steady[name]), 2)
        out[f"{name}_steady_vs_eager"] = round(_median(steady[name]) / base_steady, 2)
        diff = np.abs(probs[name] - probs["eager_reference_pipeline"]).max()
        out[f"{name}_max_prob_diff"] = float(diff)
    out.update(model)
    fastest = min(v for k, v in model.items() if k.endswith("_ms_per_tile"))
    out["ceiling_vs_eager"] = round(1000 / base_steady / fastest, 2)
    out["repeats"] = {k: [round(v, 2) for v in vs] for k, vs in rates.items()}
    out["repeats_steady"] = {k: [round(v, 2) for v in vs] for k, vs in steady.items()}
    return out


def _model_alone(run: object, repeats: int) -> dict:
    """GFLOP per tile (at the run's image size) of the run's model and its ms per tile (batch 4,
    best of ``repeats`` + 1 timed calls after a warm-up) with each prediction backend as ``predict``
    builds it (ONNX: the run's exported model); ``model_onnx_gflop_per_s`` is the rate the CPU
    sustains on it."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kelpseg.infer.engine import build_runner

    size = run.config.image_size  # type: ignore[attr-defined]
    x = torch.randn(4, run.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))  # type: ignore[attr-defined]
    with torch.inference_mode(), FlopCounterMode(display=False) as flops:
        run.model.eval()(x[:1])  # type: ignore[attr-defined]
    gflop = flops.get_total_flops() / 1e9
    out: dict = {"model_gflop_per_tile": round(gflop, 2)}
    with torch.inference_mode():
        for name in ("eager", "channels_last", "onnx"):
            call = build_runner(run, name, torch.device("cpu"))
            call(x)
            best = min(_timed(lambda call=call: call(x)) for _ in range(repeats + 1))
            out[f"model_{name}_ms_per_tile"] = round(1000 * best / x.shape[0], 1)
        run.model.to(memory_format=torch.contiguous_format)  # type: ignore[attr-defined]
    out["model_onnx_gflop_per_s"] = round(gflop / (out["model_onnx_ms_per_tile"] / 1000), 1)
    return out


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


BENCHMARKS = {
    "aoi_grouping": bench_aoi_grouping,
    "band_stats": bench_band_stats,
    "train": bench_train,
    "inference": bench_inference,
}
