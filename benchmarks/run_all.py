"""Run the benchmarks and print one JSON object per benchmark (one per line).

Usage: python benchmarks/run_all.py [--only NAME ...] [--n-train N]

All benchmarks run on a synthetic dataset generated once into a temporary directory (or
``--data-dir``). Figures are machine-dependent: they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_data import BENCHMARKS as DATA_BENCHMARKS
from bench_model import BENCHMARKS as MODEL_BENCHMARKS
from bench_scene import BENCHMARKS as SCENE_BENCHMARKS
from kelpseg.cli import quiet_libraries

BENCHMARKS: dict[str, Callable[[Path, argparse.Namespace], dict]] = {
    **DATA_BENCHMARKS,
    **MODEL_BENCHMARKS,
    **SCENE_BENCHMARKS,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help=f"subset of {list(BENCHMARKS)}")
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse/generate the dataset here")
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--n-test", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each comparison")
    parser.add_argument("--predict-tiles", type=int, default=16, help="test tiles per prediction timing")
    parser.add_argument(
        "--aoi-tiles", type=int, nargs="+", default=[1000, 7000], help="AOI grouping dataset sizes"
    )
    args = parser.parse_args()
    quiet_libraries()  # the JSON lines, not Lightning's banners
    names = args.only or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    with tempfile.TemporaryDirectory(prefix="kelpseg-bench-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        for name in names:
            start = time.perf_counter()
            result = BENCHMARKS[name](data_dir, args)
            result = {"benchmark": name, **result, "wall_s": round(time.perf_counter() - start, 2)}
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
