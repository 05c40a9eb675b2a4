"""Data benchmarks: synthetic generation, raw tile reads, and the preparation stages."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from kelpseg.io.catalog import load_catalog
from kelpseg.io.tiles import read_tile
from kelpseg.layout import DataLayout


def ensure_dataset(data_dir: Path, args: argparse.Namespace) -> DataLayout:
    """Generate the benchmark dataset once (reused by every benchmark of the run)."""
    layout = DataLayout(data_dir)
    if not layout.metadata_csv.exists():
        from kelpseg.synthetic import generate_dataset

        generate_dataset(data_dir, args.n_train, args.n_test, seed=123, workers=2, progress=False)
    return layout


def bench_synth(data_dir: Path, args: argparse.Namespace) -> dict:
    """Synthetic generation throughput, one process and two."""
    from kelpseg.synthetic import generate_dataset

    out = {}
    n = 60
    for workers in (1, 2):
        tmp = data_dir.parent / f"synth-bench-{workers}"
        start = time.perf_counter()
        generate_dataset(tmp, n, 0, seed=7, workers=workers, progress=False)
        out[f"tiles_per_s_{workers}w"] = round(n / (time.perf_counter() - start), 2)
        shutil.rmtree(tmp)
    return {"n_tiles": n, **out}


def bench_tile_read(data_dir: Path, args: argparse.Namespace) -> dict:
    """GeoTIFF decode rate of satellite tiles (float32, NaN fill), single process."""
    layout = ensure_dataset(data_dir, args)
    paths = load_catalog(layout)["image_path"].tolist()
    read_tile(paths[0])  # warm up
    start = time.perf_counter()
    for p in paths:
        read_tile(p)
    seconds = time.perf_counter() - start
    return {"n_tiles": len(paths), "tiles_per_s": round(len(paths) / seconds, 1)}


BENCHMARKS = {"synth": bench_synth, "tile_read": bench_tile_read}
