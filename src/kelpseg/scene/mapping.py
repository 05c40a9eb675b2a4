"""Map one scene with a trained run or a fold ensemble: windows → model → stitched strips → outputs.

The runs are loaded by the predict path's loader, their batch transform builds the model input,
:func:`kelpseg.infer.predict.model_probabilities` applies bf16 / TTA exactly as ``kelpseg
predict`` does, and a fold ensemble combines members with the weights and threshold of ``kelpseg
cv-predict`` (:func:`kelpseg.infer.workflows.resolve_ensemble`): the weighted mean of the
members' probabilities, one threshold. Windows are read in DataLoader workers; windows with no
valid pixel, or (with a DEM) only land, are not sent through the model (probability 0).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import shutil
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

from kelpseg.bands import BAND_INDEX, BANDS, FILL_VALUE, TILE_SIZE
from kelpseg.errors import KelpsegError
from kelpseg.infer.engine import build_runner, resolve_backend
from kelpseg.infer.predict import (
    InferenceOptions,
    model_probabilities,
    resolve_device,
    transforms_in_workers,
)
from kelpseg.io.native_stderr import held_native_stderr
from kelpseg.memory import release_free_heap
from kelpseg.parallel import process_context
from kelpseg.progress import bar as progress_bar
from kelpseg.scene.c2l2 import DEFAULT_QA_BITS, SceneSource, open_scene
from kelpseg.scene.dem import DemReader, check_dem
from kelpseg.scene.outputs import (
    SceneWriter,
    gdal_errors,
    output_paths,
    publish,
    summary_row,
    write_failure,
    write_summary,
)
from kelpseg.scene.stitch import CLOUD, VALID, WATER, StripAccumulator
from kelpseg.scene.windows import WindowGrid, blend_weights, window_grid
from kelpseg.train.transforms import pad_amounts

log = logging.getLogger(__name__)
DEM = BAND_INDEX["DEM"]
#: GDAL block cache while mapping a scene (MB): a few rows of input and output blocks.
GDAL_CACHE_MB = 64


@dataclass
class SceneOptions:
    """How to map a scene (everything but the runs and the inference options)."""

    window_size: int | None = None  # None: the competition tile size (350)
    overlap: float = 0.5
    qa_bits: Sequence[str | int] = DEFAULT_QA_BITS
    dem: Path | None = None
    aoi: Path | None = None
    skip_land: bool = True
    min_mapping_unit: int = 2
    weights: Sequence[float] | str | None = None
    threshold: float | None = None
    inference: InferenceOptions = field(default_factory=InferenceOptions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_size": self.window_size or TILE_SIZE,
            "overlap": self.overlap,
            "qa_bits": [str(b) for b in self.qa_bits],
            "dem": None if self.dem is None else str(self.dem),
            "aoi": None if self.aoi is None else str(self.aoi),
            "skip_land": self.skip_land,
            "min_mapping_unit": self.min_mapping_unit,
            **self.inference.to_dict(),
        }


# ---- runs --------------------------------------------------------------------------------------
def _uses_dem(run: Any) -> bool:
    from kelpseg.features.indices import get_index

    names = run.transform.channel_names
    return "DEM" in names or any("DEM" in get_index(n).needs for n in run.transform.spectral_indices)


def check_run(run: Any, window: int, has_dem: bool) -> None:
    """KelpsegError if the run's channels or input geometry cannot be built from a scene window."""
    from kelpseg.features.indices import INDEX_REGISTRY

    transform = run.transform
    unknown = [c for c in transform.channel_names if c not in BANDS and c not in INDEX_REGISTRY]
    if unknown:
        raise KelpsegError(
            f"{run.run_dir}: channel(s) {unknown} cannot be built from a scene "
            f"(bands {list(BANDS)} and kelpseg's spectral indices)"
        )
    if transform.resize_strategy != "pad" and window != TILE_SIZE:
        raise KelpsegError(
            f"{run.run_dir}: the run resizes {TILE_SIZE}-px tiles to {transform.image_size} px; "
            f"use --window {TILE_SIZE} (got {window})"
        )
    if transform.resize_strategy == "pad" and window > transform.image_size and window % 32:
        raise KelpsegError(f"window size {window}: larger windows must be multiples of 32")
    if not has_dem and _uses_dem(run):
        log.warning(
            "%s uses DEM channels and no --dem was given: the DEM band is nodata everywhere "
            "(the model sees 'no DEM', as on the competition's offshore pixels)",
            run.run_dir,
        )


def load_members(
    run_dirs: Sequence[str | Path], options: SceneOptions
) -> tuple[list[Any], list[float], float, str]:
    """Loaded runs, their weights, and the threshold with its source (as predict / cv-predict)."""
    from kelpseg.infer.predict import load_inference_run, resolve_threshold
    from kelpseg.infer.workflows import resolve_ensemble

    if not run_dirs:
        raise KelpsegError("mapping a scene needs at least one run dir")
    runs = [load_inference_run(Path(r), options.inference) for r in run_dirs]
    if len(runs) == 1 and options.weights is None:
        value, source = resolve_threshold(Path(run_dirs[0]), runs[0].config, options.threshold)
        return runs, [1.0], value, source
    weights, value, source = resolve_ensemble(run_dirs, options.weights, options.threshold)
    if not any(w > 0 for w in weights) or any(w < 0 for w in weights):
        raise KelpsegError(f"ensemble weights must be >= 0 with one positive, got {weights}")
    return runs, [float(w) for w in weights], float(value), source


def window_model_input(transform: Any, raw: torch.Tensor) -> torch.Tensor:
    """Raw windows (N, 7, S, S), NaN at fill -> the model input of a run's ``transform``.

    Windows larger than the run's padded tile size get its features and normalisation, then a
    pad to the next multiple of 32 (the encoder's stride) instead of the run's fixed pad.
    """
    size = raw.shape[-1]
    if transform.resize_strategy == "pad" and size > transform.image_size:
        x = transform.normalize(transform.features(raw))
        top, bottom = pad_amounts(size, int(math.ceil(size / 32) * 32))
        return F.pad(x, (top, bottom, top, bottom), value=0.0)
    return transform(raw)


def window_output(transform: Any, prob: torch.Tensor, size: int) -> torch.Tensor:
    """Probabilities (N, 1, H', W') of :func:`window_model_input`'s batch -> (N, S, S) windows."""
    if transform.resize_strategy == "pad" and size > transform.image_size:
        top, _ = pad_amounts(size, int(math.ceil(size / 32) * 32))
        return prob[:, 0, top : top + size, top : top + size]
    return transform.unpad(prob, size=size)[:, 0]


def window_probabilities(
    run: Any, raw: torch.Tensor, options: InferenceOptions, model: Any = None
) -> torch.Tensor:
    """Raw windows (N, 7, S, S), NaN at fill -> probabilities (N, S, S) with the run's transform.

    ``model``: the callable that maps the normalised batch to logits (a prediction backend's
    runner, :func:`kelpseg.infer.engine.build_runner`); default the run's PyTorch model.
    """
    model = run.model if model is None else model
    x = window_model_input(run.transform, raw)
    return window_output(run.transform, model_probabilities(model, x, options), raw.shape[-1])


def _runner(run: Any, backend: str, device: torch.device) -> Any:
    """:func:`kelpseg.infer.engine.build_runner` for ``run``, built once per backend and device.

    Kept on the run object: a series maps many scenes with the same loaded runs, and an ONNX
    runner without an exported file exports the model on its first call.
    """
    cache = getattr(run, "__dict__", None)
    if cache is None:
        return build_runner(run, backend, device)
    runners = cache.setdefault("_scene_runners", {})
    key = (backend, str(device))
    if key not in runners:
        runners[key] = build_runner(run, backend, device)
    return runners[key]


# ---- reading windows in workers ----------------------------------------------------------------
class _WindowCollate:
    """DataLoader ``collate_fn`` that also builds each member's model input from the windows not
    skipped, in the loader worker (as tile prediction does, see ``transform_in_workers``):
    ``batch["inputs"][m]`` is member ``m``'s input for ``batch["image"][~batch["skip"]]``."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(items)
        todo = torch.nonzero(~batch["skip"]).flatten()
        with torch.no_grad():
            if todo.numel():
                raw = batch["image"][todo]
                batch["inputs"] = [window_model_input(t, raw) for t in self.transforms]
            else:
                batch["inputs"] = []
        return batch


class _WindowReader(Dataset[dict[str, Any]]):
    """Windows of a scene region as raw float tiles (NaN at fill), their pixel classes and a skip flag."""

    def __init__(
        self,
        source: SceneSource,
        dem: Path | None,
        origin: tuple[int, int],
        grid: WindowGrid,
        skip_land: bool,
    ) -> None:
        self.source, self.dem, self.origin, self.grid = source, dem, origin, grid
        self.windows = grid.windows()
        self.skip_land = skip_land
        self._reader: Any = None
        self._dem: Any = None

    def __len__(self) -> int:
        return len(self.windows)

    def _open(self) -> None:
        if self._reader is None:
            self._reader = self.source.open()
            if self.dem is not None:
                s = self.source
                self._dem = DemReader(self.dem, s.crs, s.affine, s.width, s.height)

    def __getitem__(self, index: int) -> dict[str, Any]:
        size = self.grid.size
        row, col = self.windows[index]
        r, c = self.origin[0] + row, self.origin[1] + col
        try:
            self._open()
            px = self._reader.read(r, c, size, size)
            if self._dem is not None:
                px.stack[DEM] = self._dem.read(r, c, size, size)
            valid = px.valid
            dem = px.stack[DEM]
            land = (dem > 0) & (dem != FILL_VALUE)
            skip = not valid.any() or (self.skip_land and self._dem is not None and bool(land[valid].all()))
            classes = valid * VALID | px.cloud * CLOUD | px.water * WATER
            image = px.stack.astype(np.float32)
            image[px.stack == FILL_VALUE] = np.nan
            error = ""
        except KelpsegError as exc:
            image, classes, skip, error = (
                np.zeros((7, size, size), np.float32),
                np.zeros((size, size)),
                True,
                str(exc),
            )
        return {
            "image": torch.from_numpy(image),
            "classes": torch.from_numpy(np.asarray(classes, np.uint8)),
            "skip": skip,
            "index": index,
            "error": error,
        }


# ---- area of interest --------------------------------------------------------------------------
def read_aoi(path: Path, source: SceneSource) -> tuple[list[Any], list[str], tuple[int, int, int, int]]:
    """AOI polygons in the scene CRS, their names, and the pixel region ``(row, col, h, w)`` they span."""
    import pyogrio.raw
    import shapely
    from pyproj import CRS, Transformer

    if not path.is_file():
        raise KelpsegError(f"{path}: AOI file not found")
    try:
        meta, _, wkb, field_data = pyogrio.raw.read(str(path))
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise KelpsegError(f"{path}: unreadable AOI ({str(exc).splitlines()[0]})") from None
    geoms = [g for g in shapely.from_wkb(wkb) if g is not None and g.geom_type in ("Polygon", "MultiPolygon")]
    if not geoms:
        raise KelpsegError(f"{path}: no polygon in the AOI file")
    if meta.get("crs"):
        to_scene = Transformer.from_crs(
            CRS.from_user_input(meta["crs"]), CRS.from_wkt(source.crs_wkt), always_xy=True
        )
        geoms = [
            shapely.transform(g, lambda xy: np.column_stack(to_scene.transform(xy[:, 0], xy[:, 1])))
            for g in geoms
        ]
    fields = list(meta.get("fields", []))
    key = next((f for f in ("name", "aoi", "id") if f in fields), None)
    names = (
        [str(v) for v in field_data[fields.index(key)]] if key else [f"aoi{i + 1}" for i in range(len(geoms))]
    )
    inv = ~source.affine
    cols, rows = [], []
    for g in geoms:
        x0, y0, x1, y1 = g.bounds
        for x, y in ((x0, y0), (x0, y1), (x1, y0), (x1, y1)):
            cc, rr = inv * (x, y)
            cols.append(cc)
            rows.append(rr)
    r0, r1 = max(math.floor(min(rows)), 0), min(math.ceil(max(rows)), source.height)
    c0, c1 = max(math.floor(min(cols)), 0), min(math.ceil(max(cols)), source.width)
    if r1 <= r0 or c1 <= c0:
        raise KelpsegError(f"{path}: the AOI lies outside the scene {source.meta.scene_id}")
    return geoms, names[: len(geoms)], (r0, c0, r1 - r0, c1 - c0)


# ---- the whole scene ---------------------------------------------------------------------------
@dataclass
class SceneResult:
    scene_id: str
    paths: dict[str, Path]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    seconds: float
    n_windows: int
    n_skipped: int


def map_scene(
    scene: str | Path | SceneSource,
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    options: SceneOptions | None = None,
    members: tuple[list[Any], list[float], float, str] | None = None,
) -> SceneResult:
    """Map ``scene`` with ``run_dirs`` into ``out_dir`` (see :mod:`kelpseg.scene.outputs` for files).

    ``members`` (from :func:`load_members`) lets a series load the runs once.
    """
    # GDAL's block cache defaults to 5 % of RAM and holds every block read or written until it is
    # full: capped, so that memory does not grow with the scene. rasterio takes the cap in bytes.
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20):
        return _map_scene(scene, run_dirs, out_dir, options, members)


def _map_scene(
    scene: str | Path | SceneSource,
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    options: SceneOptions | None,
    members: tuple[list[Any], list[float], float, str] | None,
) -> SceneResult:
    started = time.perf_counter()
    options = options or SceneOptions()
    source = scene if isinstance(scene, SceneSource) else open_scene(scene, options.qa_bits)
    bounds = _bounds(source)
    if options.dem is not None:
        check_dem(options.dem, source.crs, bounds)
    size = int(options.window_size or TILE_SIZE)
    runs, weights, threshold, threshold_source = members or load_members(run_dirs, options)
    for run in runs:
        check_run(run, size, options.dem is not None)
    aoi_geoms, aoi_names, region = [], [], (0, 0, source.height, source.width)
    if options.aoi is not None:
        aoi_geoms, aoi_names, region = read_aoi(Path(options.aoi), source)
    r0, c0, height, width = region
    grid = window_grid(height, width, size, options.overlap)
    region_transform = source.affine * source.affine.translation(c0, r0)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.meta.scene_id}.", dir=out_dir))
    meta = source.meta.to_dict()
    record = {
        "scene": str(source.origin),
        **meta,
        "crs": source.crs.to_string(),
        "region": {"row": r0, "col": c0, "height": height, "width": width},
        "runs": [str(r) for r in run_dirs],
        "weights": weights,
        "threshold": threshold,
        "threshold_source": threshold_source,
        **options.to_dict(),
    }
    tags = {k: str(v) for k, v in record.items() if not isinstance(v, dict | list)}
    tags["runs"] = ",".join(record["runs"])
    # On any failure nothing is published (earlier outputs stay as they were), the staging folder
    # is removed, and a failed write becomes one line naming the output it was writing.
    writer: SceneWriter | None = None
    with gdal_errors() as gdal_messages:
        try:
            writer = SceneWriter(
                staging,
                source.meta.scene_id,
                source.crs,
                region_transform,
                width,
                height,
                threshold,
                aoi_geoms,
                tags,
            )
            n_skipped = _predict_into(writer, source, runs, weights, grid, (r0, c0), options)
            stats = writer.finish(meta, options.min_mapping_unit)
            extra = {
                "kelp_ha_polygons": round(stats["kelp_m2_polygons"] / 1e4, 4),
                "n_polygons": stats["n_polygons"],
                "threshold": threshold,
                "runs": ";".join(record["runs"]),
            }
            row = summary_row(meta, "all", writer.total, extra)
            rows = [row] + [
                summary_row(meta, name, counts, {"threshold": threshold, "runs": extra["runs"]})
                for name, counts in zip(aoi_names, writer.per_aoi, strict=True)
            ]
            seconds = time.perf_counter() - started
            summary = {
                **record,
                **row,
                "pixels": writer.total.pixels,
                "areas_ha": writer.total.hectares(),
                "aoi_rows": rows[1:],
                **stats,
                "n_windows": len(grid),
                "n_windows_skipped": n_skipped,
                "seconds": round(seconds, 2),
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            write_summary(staging, source.meta.scene_id, summary, row)
            paths = publish(staging, out_dir, source.meta.scene_id)
        except BaseException as exc:
            held: list[str] = []
            with held_native_stderr(held):
                if writer is not None:
                    with contextlib.suppress(Exception):
                        writer.close()
                # Datasets still referenced by the failed frames close (and libtiff prints its
                # complaints) when those frames go: let that happen while stderr is held.
                traceback.clear_frames(exc.__traceback__)
                gc.collect()
            shutil.rmtree(staging, ignore_errors=True)
            target = output_paths(out_dir, source.meta.scene_id)[writer.writing if writer else "probability"]
            messages = [*gdal_messages, *(writer.held if writer else []), *held]
            failure = write_failure(exc, target, messages) if isinstance(exc, Exception) else None
            if failure is not None:
                raise failure from None
            raise
    return SceneResult(source.meta.scene_id, paths, summary, rows, seconds, len(grid), n_skipped)


def _bounds(source: SceneSource) -> tuple[float, float, float, float]:
    t = source.affine
    xs = [t.c, t.c + t.a * source.width]
    ys = [t.f, t.f + t.e * source.height]
    return min(xs), min(ys), max(xs), max(ys)


def _predict_into(
    writer: SceneWriter,
    source: SceneSource,
    runs: Sequence[Any],
    weights: Sequence[float],
    grid: WindowGrid,
    origin: tuple[int, int],
    options: SceneOptions,
) -> int:
    """Run every window through the members, stitch, hand finished strips to ``writer``."""

    inference = options.inference
    device = resolve_device(inference.device)
    # The same backends as tile prediction (``auto``: the run's exported ONNX model on a CPU).
    backend = resolve_backend(inference.backend, device, inference.bf16)
    members = [(_runner(r, backend, device), w) for r, w in zip(runs, weights, strict=True) if w > 0]
    for run in runs:
        run.transform.to(device).eval()
    weight_sum = float(sum(w for _, w in members))
    workers = max(0, int(inference.num_workers))
    dataset = _WindowReader(source, options.dem, origin, grid, options.skip_land)
    used = [r for r, w in zip(runs, weights, strict=True) if w > 0]
    in_workers = transforms_in_workers(inference, device)
    collate = _WindowCollate([r.transform.cpu().eval() for r in used]) if in_workers else None
    loader = DataLoader(
        dataset,
        batch_size=inference.batch_size,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context=process_context() if workers > 0 else None,
        pin_memory=device.type == "cuda",
    )
    acc = StripAccumulator(grid.height, grid.width, grid.size, blend_weights(grid.size, grid.overlap))
    skipped = 0
    bar = progress_bar(len(dataset), desc="scene", enabled=inference.progress, unit="window")
    try:
        with torch.inference_mode():
            for batch in loader:
                errors = [e for e in batch["error"] if e]
                if errors:
                    raise KelpsegError(errors[0])
                skip = batch["skip"].numpy().astype(bool)
                probs = np.zeros((len(skip), grid.size, grid.size), np.float32)
                todo = np.flatnonzero(~skip)
                if todo.size:
                    raw = batch["image"][todo].to(device, non_blocking=True)
                    total = None
                    for m, (run, (model, w)) in enumerate(zip(used, members, strict=True)):
                        if in_workers:
                            x = batch["inputs"][m]
                            prob = model_probabilities(model, x, inference)
                            p = window_output(run.transform, prob, grid.size) * w
                        else:
                            p = window_probabilities(run, raw, inference, model) * w
                        total = p if total is None else total + p
                    assert total is not None
                    mean = total / weight_sum
                    if inference.land_mask:
                        mean = torch.where(raw[:, DEM] > 0, torch.zeros_like(mean), mean)
                    probs[todo] = mean.cpu().numpy()
                skipped += int(skip.sum())
                classes = batch["classes"].numpy()
                for k, index in enumerate(batch["index"].tolist()):
                    row, col = dataset.windows[index]
                    if row != acc.base:
                        for strip in acc.advance(row):
                            writer.write(strip)
                        release_free_heap()
                    acc.add(row, col, probs[k], classes[k])
                bar.update(len(skip))
        for strip in acc.finish():
            writer.write(strip)
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            del loader
    return skipped


__all__ = ["SceneOptions", "SceneResult", "check_run", "load_members", "map_scene", "output_paths"]
