"""Whole-scene benchmarks: throughput against per-tile predict, peak memory against scene size.

``scene_throughput``: a synthetic 2,000² C2 L2 scene mapped at zero overlap (windows, model,
stitching, COGs, polygons, summary) against ``predict_folder`` on the same 350² windows written
as competition tiles (read, model, one float GeoTIFF per tile). ``stitching_overhead`` =
scene seconds / predict seconds − 1 (target ≤ 0.20), medians of ``--repeats`` interleaved runs.
Windows entirely fill are skipped by the scene path (and predicted by ``predict``), as on a real
scene.

``scene_memory``: peak RSS of a fresh process mapping a 2,000² and an 8,000² synthetic scene
(zero overlap, main-process reading, all-land windows skipped with the scene's DEM): the strip
accumulator keeps it flat (target: the larger within 1.3× of the smaller). A tiny 1-step run
keeps the 8,000² scene to a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_RUN: dict[str, Path] = {}


def _tiny_run(work: Path) -> Path:
    """A 1-step ResNet-18 UNet run (the test suite's builder: random tiles, ~20 s)."""
    if "run" not in _RUN:
        sys.path.insert(0, str(ROOT / "tests"))
        from builders import tiny_run_dir

        _RUN["run"] = tiny_run_dir(work / "tiny-run")
    return _RUN["run"]


def _options(workers: int, overlap: float = 0.0):
    from kelpseg.infer.predict import InferenceOptions
    from kelpseg.scene.mapping import SceneOptions

    return SceneOptions(
        overlap=overlap,
        skip_land=False,
        inference=InferenceOptions(num_workers=workers, progress=False, batch_size=8),
    )


def bench_scene_throughput(data_dir: Path, args: argparse.Namespace) -> dict:
    from kelpseg.infer.predict import predict_folder
    from kelpseg.io.tiles import write_geotiff
    from kelpseg.scene.c2l2 import open_scene
    from kelpseg.scene.mapping import map_scene
    from kelpseg.scene.synthetic import write_synthetic_scene
    from kelpseg.scene.windows import window_grid

    with tempfile.TemporaryDirectory(prefix="kelpseg-scene-") as tmp:
        work = Path(tmp)
        run = _tiny_run(work)
        size = 2000
        scene = write_synthetic_scene(work / "scenes", size, size, seed=1, with_dem=False)
        source = open_scene(scene.folder)
        grid = window_grid(size, size, 350, 0.0)
        tiles = work / "tiles"
        with source.open() as reader:
            for k, (r, c) in enumerate(grid.windows()):
                write_geotiff(tiles / f"W{k:04d}_satellite.tif", reader.read(r, c, 350, 350).stack, "int32")
        options = _options(workers=1)
        map_scene(scene.folder, [run], work / "warm", options)  # warm-up: imports, thread pools
        t_predict_all, t_scene_all = [], []
        for k in range(max(1, args.repeats)):  # interleaved: a busy spell hits both paths alike
            t0 = time.perf_counter()
            predict_folder(run, tiles, work / f"pred{k}", soft=True, options=options.inference)
            t_predict_all.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = map_scene(scene.folder, [run], work / f"out{k}", options)
            t_scene_all.append(time.perf_counter() - t0)
    t_predict, t_scene = statistics.median(t_predict_all), statistics.median(t_scene_all)
    mpx = size * size / 1e6
    return {
        "scene_px": f"{size}x{size}",
        "windows": len(grid),
        "windows_skipped": result.n_skipped,
        "scene_s": round(t_scene, 2),
        "predict_s": round(t_predict, 2),
        "scene_mpx_per_s": round(mpx / t_scene, 3),
        "scene_windows_per_s": round(len(grid) / t_scene, 2),
        "predict_mpx_per_s": round(mpx / t_predict, 3),
        "predict_windows_per_s": round(len(grid) / t_predict, 2),
        "stitching_overhead": round(t_scene / t_predict - 1, 3),
        "repeats": {
            "scene_s": [round(t, 2) for t in t_scene_all],
            "predict_s": [round(t, 2) for t in t_predict_all],
        },
    }


_CHILD = """
import json, resource, sys, time
from pathlib import Path
from kelpseg.parallel import adopt_worker_policy
adopt_worker_policy()  # dies with the benchmark, never left running
sys.path.insert(0, {bench!r})
from bench_scene import _options
from kelpseg.scene.mapping import map_scene
t0 = time.perf_counter()
options = _options(workers=0)
options.dem, options.skip_land = Path({dem!r}), True  # all-land windows skipped, as on a real scene
res = map_scene(Path({scene!r}), [Path({run!r})], Path({out!r}), options)
print(json.dumps({{"seconds": time.perf_counter() - t0, "windows": res.n_windows,
                  "skipped": res.n_skipped,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def _measure(code: str, what: str) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line as JSON. The child never outlives this."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    try:
        stdout, stderr = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: {stderr.strip().splitlines()[-1:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def bench_scene_memory(data_dir: Path, args: argparse.Namespace) -> dict:
    from kelpseg.scene.synthetic import write_synthetic_scene

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="kelpseg-scene-") as tmp:
        work = Path(tmp)
        run = _tiny_run(work)
        for size in (2000, 8000):
            scene = write_synthetic_scene(work / f"s{size}", size, size, seed=2)
            code = _CHILD.format(
                bench=str(Path(__file__).parent),
                scene=str(scene.folder),
                dem=str(scene.dem),
                run=str(run),
                out=str(work / f"o{size}"),
            )
            child = _measure(code, f"scene {size}")
            out[f"peak_rss_mb_{size}"] = round(child["peak_rss_mb"], 1)
            out[f"seconds_{size}"] = round(child["seconds"], 1)
            out[f"windows_{size}"] = child["windows"]
            out[f"windows_skipped_{size}"] = child["skipped"]
            out[f"mpx_per_s_{size}"] = round(size * size / 1e6 / child["seconds"], 3)
    out["rss_ratio_8000_vs_2000"] = round(out["peak_rss_mb_8000"] / out["peak_rss_mb_2000"], 3)
    return out


BENCHMARKS = {"scene_throughput": bench_scene_throughput, "scene_memory": bench_scene_memory}
