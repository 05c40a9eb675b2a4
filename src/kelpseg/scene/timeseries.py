"""Many scenes of one site → one CSV row per scene (per AOI polygon when given) and a plot.

``map_series`` finds the scenes under a folder (each C2 L2 product folder, ``.tar`` or 7-band
``.tif``), maps each with the same runs (loaded once) into ``<out>/<scene id>/``, and writes
``<out>/timeseries.csv`` (sorted by date) and ``<out>/timeseries.png``: kelp area through time,
with the share of the region that was not observed (cloud or fill) as bars, since a low kelp
area under a cloudy sky is not a low kelp area. A scene whose outputs already exist is read
back, not mapped again (re-running resumes a series).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kelpseg.errors import KelpsegError
from kelpseg.io.atomic import save_figure, write_text
from kelpseg.scene.c2l2 import PRODUCT_RE, open_scene
from kelpseg.scene.mapping import SceneOptions, load_members, map_scene
from kelpseg.scene.outputs import SUMMARY_COLUMNS, csv_text, output_paths

log = logging.getLogger(__name__)
SERIES_CSV = "timeseries.csv"
SERIES_PNG = "timeseries.png"


def find_scenes(folder: str | Path) -> list[Path]:
    """Scene inputs directly under ``folder``: C2 L2 product folders, ``.tar`` files, ``.tif`` stacks."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KelpsegError(f"{folder}: scene folder not found")
    found = []
    for path in sorted(folder.iterdir()):
        product = path.is_dir() and any(PRODUCT_RE.match(p.stem) for p in path.iterdir())
        stack = path.suffix.lower() in (".tif", ".tiff") and not path.name.endswith(("_kelp.tif", "_dem.tif"))
        if product or path.suffix == ".tar" or stack:
            found.append(path)
    if not found:
        raise KelpsegError(f"{folder}: no scenes (C2 L2 folders, .tar or 7-band .tif) found")
    return found


def _existing_rows(out: Path, scene_id: str) -> list[dict[str, Any]] | None:
    paths = output_paths(out, scene_id)
    if not all(p.exists() for p in paths.values()):
        return None
    summary = json.loads(paths["scene_summary"].read_text())
    row = {k: summary.get(k) for k in SUMMARY_COLUMNS}
    return [row, *summary.get("aoi_rows", [])]


def map_series(
    scenes: str | Path | Sequence[str | Path],
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    options: SceneOptions | None = None,
    ray: bool = False,
    ray_address: str | None = None,
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Map every scene; returns (CSV path, PNG path, rows)."""
    options = options or SceneOptions()
    paths = find_scenes(scenes) if isinstance(scenes, str | Path) else [Path(s) for s in scenes]
    sources = [open_scene(p, options.qa_bits) for p in paths]
    ids = [s.meta.scene_id for s in sources]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        raise KelpsegError(f"scene(s) given more than once: {', '.join(dups)}")
    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    todo = []
    for source in sources:
        done = _existing_rows(out / source.meta.scene_id, source.meta.scene_id)
        if done is None:
            todo.append(source)
        else:
            rows.extend(done)
    if todo and ray:
        rows.extend(_map_on_ray(todo, run_dirs, out, options, ray_address))
    elif todo:
        members = load_members(run_dirs, options)
        for source in todo:
            log.info("mapping %s", source.meta.scene_id)
            result = map_scene(source, run_dirs, out / source.meta.scene_id, options, members=members)
            rows.extend(result.rows)
    rows.sort(key=lambda r: (str(r.get("date") or ""), str(r.get("scene_id")), str(r.get("aoi"))))
    csv_path = write_text(out / SERIES_CSV, csv_text(rows))
    png_path = plot_series(rows, out / SERIES_PNG)
    return csv_path, png_path, rows


def _map_on_ray(
    sources: Sequence[Any],
    run_dirs: Sequence[str | Path],
    out: Path,
    options: SceneOptions,
    address: str | None,
) -> list[dict[str, Any]]:
    """One Ray task per scene (embedded local Ray, or the cluster at ``address``).

    Paths are made absolute (a worker's working directory is not the driver's), the driver's
    forwarded variables are set in each worker (as for folds), and an embedded Ray is shut down
    only when this call started it.
    """
    import dataclasses

    import ray

    from kelpseg.distributed.ray_runtime import apply_env, forwarded_env, init_ray, shutdown_ray

    runs = [str(Path(r).resolve()) for r in run_dirs]
    absolute = dataclasses.replace(
        options,
        dem=None if options.dem is None else Path(options.dem).resolve(),
        aoi=None if options.aoi is None else Path(options.aoi).resolve(),
    )
    scenes = [open_scene(Path(s.origin).resolve(), options.qa_bits) for s in sources]
    env = forwarded_env()

    def one(source: Any) -> list[dict[str, Any]]:
        apply_env(env)
        members = load_members(runs, absolute)  # the runs as given stay in the summaries
        return map_scene(source, run_dirs, out.resolve() / source.meta.scene_id, absolute, members).rows

    rows: list[dict[str, Any]] = []
    started_here = not ray.is_initialized()
    info = init_ray(address)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(one)
        try:
            results = ray.get([task.remote(s) for s in scenes])
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, KelpsegError):  # a bad input stays a one-line error
                raise KelpsegError(str(exc.cause)) from None
            raise
        for result in results:
            rows.extend(result)
    finally:
        if info.embedded and started_here:
            shutdown_ray()
    return rows


def plot_series(rows: Sequence[dict[str, Any]], target: Path) -> Path:
    """Kelp area (ha) per date and AOI; bars: the unobserved share of the region (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.DataFrame(list(rows))
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    share = ax.twinx()
    if not table.empty and table["date"].notna().any():
        table = table.assign(when=pd.to_datetime(table["date"], errors="coerce")).dropna(subset=["when"])
        whole = table[table["aoi"] == "all"].sort_values("when")
        share.bar(
            whole["when"],
            whole["unobserved_fraction"].astype(float) * 100,
            width=6,
            color="0.8",
            label="unobserved (cloud, fill) %",
            zorder=0,
        )
        for aoi, part in table.groupby("aoi", sort=False):
            part = part.sort_values("when")
            ax.plot(part["when"], part["kelp_ha"].astype(float), marker="o", label=f"kelp area ({aoi})")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
    ax.set_zorder(share.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_ylabel("kelp canopy area (ha)")
    share.set_ylabel("unobserved share of the region (%)")
    share.set_ylim(0, 100)
    ax.set_ylim(bottom=0)
    ax.set_title("Kelp canopy area through time")
    lines, labels = ax.get_legend_handles_labels()
    bars, bar_labels = share.get_legend_handles_labels()
    ax.legend(lines + bars, labels + bar_labels, loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(target, fig)
    plt.close(fig)
    return target
