"""Predict kelp with a trained run, and fit a run's decision threshold on its validation fold.

``predict_folder`` reads tiles in DataLoader workers, applies the run's own batch transform
(band selection, indices, masking, normalisation with the run's band stats, padding), runs
the model (optionally under bf16 autocast and with TTA), crops back to 350 × 350 and writes
per tile either a float32 probability GeoTIFF (``soft=True``) or a uint8 0/1 mask, with the
source tile's CRS and transform. ``predict_config.json`` records every option used.

Threshold (hard masks only): the ``threshold`` argument, else the run's ``threshold.json``
(written by :func:`evaluate_run`), else the run config's ``decision_threshold``.

Land mask (optional, as the 3rd place did): pixels whose elevation (DEM band) is above 0 m
cannot be kelp, so their probability is set to 0 before thresholding. Pixels with DEM nodata
are left alone.

``evaluate_run`` predicts the run's own validation tiles (ids from its ``split.json``),
searches the threshold on an exact grid (:mod:`kelpseg.evaluate.threshold`) and writes
``threshold.json`` into the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kelpseg.bands import BAND_INDEX, N_BANDS, TILE_SIZE
from kelpseg.errors import KelpsegError, TileError
from kelpseg.evaluate.evaluate import binarize, format_ids
from kelpseg.evaluate.metrics import ConfusionCounts
from kelpseg.evaluate.threshold import DEFAULT_GRID, ThresholdAccumulator, ThresholdResult
from kelpseg.infer.engine import build_runner, resolve_backend
from kelpseg.infer.tta import predict_with_tta, resolve_transforms
from kelpseg.io.atomic import ensure_writable, write_json
from kelpseg.io.tiles import tile_info, write_mask, write_probability
from kelpseg.layout import IMAGE_SUFFIX, DataLayout, RunLayout, mask_name, tile_id_from_path
from kelpseg.parallel import pmap, process_context
from kelpseg.train.transforms import TransformingCollate

log = logging.getLogger(__name__)

PREDICT_CONFIG_FILE = "predict_config.json"
DEM = BAND_INDEX["DEM"]


# ---- inputs ------------------------------------------------------------------------------------
def resolve_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder (its ``*_satellite.tif``, sorted) or a list of image paths -> list of paths."""
    if isinstance(inputs, str | Path):
        folder = Path(inputs)
        if not folder.is_dir():
            raise KelpsegError(f"{folder}: input folder not found")
        paths = sorted(folder.glob(f"*{IMAGE_SUFFIX}"))
        if not paths:
            raise KelpsegError(f"{folder}: no *{IMAGE_SUFFIX} tiles found")
        return paths
    paths = [Path(p) for p in inputs]
    if not paths:
        raise KelpsegError("no input tiles given")
    ids = [tile_id_from_path(p) for p in paths]
    dups = {t for t in ids if ids.count(t) > 1}
    if dups:
        raise KelpsegError(f"input tiles repeated: {format_ids(dups)}")
    return paths


def _check_header(path: Path) -> None:
    info = tile_info(path)
    if info.count != N_BANDS or (info.height, info.width) != (TILE_SIZE, TILE_SIZE):
        raise TileError(
            f"{path}: expected a satellite tile of {N_BANDS} band(s) x {TILE_SIZE} x {TILE_SIZE}, "
            f"got {info.count} x {info.height} x {info.width}"
        )


def validate_inputs(paths: Sequence[Path], workers: int = 4, progress: bool = False) -> None:
    """Read every header (cheap) so that a wrong file fails before the model is loaded."""
    pmap(_check_header, list(paths), workers, progress, "check tiles", threads=True)


class _TileReader(Dataset[dict[str, Any]]):
    """The training dataset's items, with read errors carried to the main process as text.

    (An exception raised in a DataLoader worker reaches the caller wrapped in a multi-line
    traceback; returning the message keeps the user-facing error one line naming the file.)
    """

    def __init__(self, image_paths: Sequence[Path], mask_paths: Sequence[Path | None] | None = None) -> None:
        from kelpseg.train.dataset import KelpTileDataset

        ids = [tile_id_from_path(p) for p in image_paths]
        self.inner = KelpTileDataset(image_paths, mask_paths, ids)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            item = dict(self.inner[index])
            item["error"] = ""
        except KelpsegError as exc:
            item = {
                "image": torch.zeros(N_BANDS, TILE_SIZE, TILE_SIZE),
                "mask": torch.zeros(TILE_SIZE, TILE_SIZE, dtype=torch.uint8),
                "tile_id": self.inner.tile_ids[index],
                "error": str(exc),
            }
        return item


def transforms_in_workers(options: InferenceOptions, device: torch.device) -> bool:
    """Whether the input transform runs in the DataLoader workers (see ``transform_in_workers``)."""
    if options.num_workers <= 0 or device.type != "cpu":
        return False
    return True if options.transform_in_workers is None else bool(options.transform_in_workers)


# ---- the prediction loop -----------------------------------------------------------------------
def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class InferenceOptions:
    """How to run a trained run: which checkpoint, TTA, bf16 autocast, land mask, batching, device.

    One object carries these through every prediction path (``kelpseg predict``/``eval``, the
    submission workflows and the pipeline), so an option added here reaches all of them.
    """

    checkpoint: str = "best"
    tta: bool = False
    tta_merge: str = "mean"
    tta_transforms: str | Sequence[str] = "d4"
    bf16: bool = False
    land_mask: bool = False
    #: how the model runs (:mod:`kelpseg.infer.engine`): auto, eager, channels_last, compile, onnx
    backend: str = "auto"
    batch_size: int = 8
    num_workers: int = 2
    #: Run the run's input transform (indices, normalisation, padding) in the DataLoader workers,
    #: one thread each, overlapping the model's compute: None = on a CPU with workers, where the
    #: transform would otherwise hold up the model (on a GPU it runs on the device).
    transform_in_workers: bool | None = None
    device: str | torch.device | None = None
    progress: bool = True
    #: Reference run directories only (kelpseg runs carry their own stats): the stats JSON, or
    #: the data directory whose ``processed/`` holds it (see :mod:`kelpseg.reference`).
    band_stats: Path | None = None
    data_dir: Path | None = None
    #: Reference runs: kelp probability as "sigmoid" of its kelp logit (its behaviour, default)
    #: or "softmax" over its two logits (the fix of its [Q] defect; changes the predictions).
    reference_score: str = "sigmoid"

    def to_dict(self) -> dict[str, Any]:
        """The options as recorded next to predictions (device and progress left out)."""
        return {
            "checkpoint": self.checkpoint,
            "tta": self.tta,
            "tta_merge": self.tta_merge if self.tta else None,
            "tta_transforms": list(resolve_transforms(self.tta_transforms)) if self.tta else None,
            "bf16": self.bf16,
            "land_mask": self.land_mask,
            "backend": self.backend,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "transform_in_workers": self.transform_in_workers,
            "band_stats": None if self.band_stats is None else str(self.band_stats),
            "reference_score": self.reference_score,
        }


def model_probabilities(
    model: torch.nn.Module,
    x: torch.Tensor,
    options: InferenceOptions,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> torch.Tensor:
    """Model input ``(N, C, S, S)`` -> kelp probabilities ``(N, 1, S, S)`` float32 (TTA, bf16 as asked).

    The one place that turns a transformed batch into probabilities: the tile and scene paths
    both call it, so TTA and autocast behave the same in each.
    """
    if autocast is None:
        autocast = (
            torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
            if options.bf16
            else contextlib.nullcontext()
        )
    with autocast:
        if options.tta:
            prob = predict_with_tta(model, x, options.tta_transforms, options.tta_merge)
        else:
            prob = torch.sigmoid(model(x).float())
    return prob.float()


def iter_probabilities(
    run: Any,
    image_paths: Sequence[Path],
    options: InferenceOptions,
    mask_paths: Sequence[Path | None] | None = None,
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Yield ``(tile_ids, probabilities (n, 350, 350) float32, masks (n, 350, 350) uint8)`` per batch.

    ``run`` is a :class:`kelpseg.train.run.LoadedRun` (or anything with ``model``,
    ``transform`` and ``unpad``). Masks are zeros unless ``mask_paths`` are given.
    """
    from kelpseg.progress import bar as progress_bar

    if options.batch_size < 1:
        raise KelpsegError(f"batch_size must be >= 1, got {options.batch_size}")
    device = resolve_device(options.device)
    backend = resolve_backend(options.backend, device, options.bf16)
    model, transform = build_runner(run, backend, device), run.transform.to(device).eval()
    if options.tta:
        resolve_transforms(options.tta_transforms)
    workers = max(0, int(options.num_workers))
    in_workers = transforms_in_workers(options, device)
    loader = DataLoader(
        _TileReader(image_paths, mask_paths),
        batch_size=options.batch_size,
        num_workers=workers,
        collate_fn=TransformingCollate(run.transform.cpu().eval()) if in_workers else None,
        multiprocessing_context=process_context() if workers > 0 else None,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if options.bf16
        else contextlib.nullcontext()
    )
    bar = progress_bar(len(image_paths), "predict", enabled=options.progress)
    try:
        with torch.inference_mode():
            for batch in loader:
                errors = [e for e in batch["error"] if e]
                if errors:
                    raise TileError(errors[0])
                raw = batch["image"].to(device, non_blocking=True)
                x = batch["input"] if in_workers else transform(raw)
                prob = model_probabilities(model, x, options, autocast)
                prob = run.unpad(prob)[:, 0]
                if options.land_mask:
                    prob = torch.where(raw[:, DEM] > 0, torch.zeros_like(prob), prob)
                bar.update(len(batch["tile_id"]))
                yield list(batch["tile_id"]), prob.cpu().numpy(), batch["mask"].numpy()
    finally:
        bar.close()


# ---- predict_folder ----------------------------------------------------------------------------
@dataclass
class PredictResult:
    """What :func:`predict_folder` wrote."""

    output_dir: Path
    tile_ids: list[str]
    soft: bool
    threshold: float | None
    threshold_source: str | None
    seconds: float
    config_path: Path

    @property
    def n_tiles(self) -> int:
        return len(self.tile_ids)

    @property
    def paths(self) -> list[Path]:
        return [self.output_dir / mask_name(t) for t in self.tile_ids]


def resolve_threshold(run_dir: Path, config: Any, threshold: float | None) -> tuple[float, str]:
    """``(threshold, source)``: the argument, else ``threshold.json``, else the config's."""
    if threshold is not None:
        value, source = float(threshold), "argument"
    elif RunLayout(run_dir).threshold.is_file():
        path = RunLayout(run_dir).threshold
        try:
            value = float(json.loads(path.read_text())["threshold"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KelpsegError(f"{path}: unreadable threshold file ({exc})") from None
        source = str(path)
    else:
        value, source = float(getattr(config, "decision_threshold", 0.5)), "config.decision_threshold"
    if not 0 <= value <= 1:
        raise KelpsegError(f"decision threshold must lie in [0, 1], got {value} (from {source})")
    return value, source


def load_inference_run(run_dir: Path, options: InferenceOptions) -> Any:
    """``load_run`` with what the inference options say about the run (checkpoint, and the band
    stats / data dir a reference run needs); shared by tile and scene prediction."""
    from kelpseg.train.run import load_run

    return load_run(
        run_dir,
        options.checkpoint,
        band_stats=options.band_stats,
        data_dir=options.data_dir,
        reference_score=options.reference_score,
    )


def predict_with_run(
    run: Any,
    image_paths: Sequence[Path],
    output_dir: str | Path,
    soft: bool,
    threshold: float | None,
    options: InferenceOptions,
) -> list[str]:
    """Write one prediction per tile into ``output_dir``; returns the tile ids in input order.

    ``threshold`` is required for hard masks (``soft=False``) and ignored otherwise.
    """
    if not soft and threshold is None:
        raise ValueError("hard masks need a threshold")
    cut = 0.5 if threshold is None else float(threshold)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    source = {tile_id_from_path(p): p for p in image_paths}
    done: list[str] = []

    def write(tid: str, prob: np.ndarray) -> None:
        target = output_dir / mask_name(tid)
        if soft:
            write_probability(target, prob, like=source[tid])
        else:
            write_mask(target, binarize(prob, cut).astype(np.uint8), like=source[tid])

    # writes overlap with the next batch's compute; at most one batch of writes is pending
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: list[Future[None]] = []
        for ids, probs, _ in iter_probabilities(run, image_paths, options):
            for f in pending:
                f.result()
            pending = [pool.submit(write, tid, prob) for tid, prob in zip(ids, probs, strict=True)]
            done.extend(ids)
        for f in pending:
            f.result()
    return done


def predict_folder(
    run_dir: str | Path,
    inputs: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    soft: bool = False,
    threshold: float | None = None,
    options: InferenceOptions | None = None,
) -> PredictResult:
    """Predict every tile of ``inputs`` (a folder of ``*_satellite.tif`` or a list of paths).

    Writes ``<output_dir>/<tile_id>_kelp.tif`` (float32 probabilities when ``soft``, else uint8
    0/1 at the resolved threshold) and ``<output_dir>/predict_config.json``.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    options = options or InferenceOptions()
    paths = resolve_inputs(inputs)
    validate_inputs(paths, progress=False)
    ensure_writable(output_dir)  # before the model loads and a batch runs
    run = load_inference_run(run_dir, options)
    value, source = (None, None) if soft else resolve_threshold(run_dir, run.config, threshold)
    ids = predict_with_run(run, paths, output_dir, soft, value, options)
    seconds = time.perf_counter() - started
    config = {
        "run_dir": str(run_dir),
        "inputs": str(inputs) if isinstance(inputs, str | Path) else f"{len(paths)} listed files",
        "n_tiles": len(ids),
        "soft": soft,
        "threshold": value,
        "threshold_source": source,
        **options.to_dict(),
        "checkpoint": str(getattr(run, "checkpoint", options.checkpoint)),
        "device": str(resolve_device(options.device)),
        "seconds": round(seconds, 2),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    config_path = write_json(Path(output_dir) / PREDICT_CONFIG_FILE, config)
    return PredictResult(
        output_dir=Path(output_dir),
        tile_ids=ids,
        soft=soft,
        threshold=value,
        threshold_source=source,
        seconds=seconds,
        config_path=config_path,
    )


# ---- evaluate_run ------------------------------------------------------------------------------
def validation_tiles(run_dir: Path, config: Any, layout: DataLayout | None = None) -> list[str]:
    """Validation tile ids of a run: from its ``split.json``, else from the split parquet."""
    split_file = RunLayout(run_dir).split
    if split_file.is_file():
        info = json.loads(split_file.read_text())
        if info.get("val_tile_ids"):
            return [str(t) for t in info["val_tile_ids"]]
    import pandas as pd

    layout = layout or DataLayout(Path(config.data_dir))
    path = config.resolved_split_path(layout)
    if not path.is_file():
        raise KelpsegError(
            f"{run_dir}: no validation tiles recorded in {RunLayout.SPLIT} and no split table {path}"
        )
    table = pd.read_parquet(path)
    column = f"split_{config.fold}"
    if column not in table.columns:
        raise KelpsegError(f"{path}: no column {column!r} for fold {config.fold}")
    ids = table.loc[table[column] == "val", "tile_id"].astype(str).tolist()
    if not ids:
        raise KelpsegError(f"{path}: fold {config.fold} has no validation tiles")
    return ids


def _val_paths(ids: Iterable[str], layout: DataLayout) -> tuple[list[Path], list[Path]]:
    ids = list(ids)
    images = [layout.image_path(t, "train") for t in ids]
    masks = [layout.mask_path(t) for t in ids]
    missing = [t for t, i, m in zip(ids, images, masks, strict=True) if not (i.is_file() and m.is_file())]
    if missing:
        raise KelpsegError(
            f"{layout.root}: image or mask missing for {len(missing)} validation tile(s): "
            f"{format_ids(missing)}"
        )
    return images, masks


def evaluate_run(
    run_dir: str | Path,
    layout: DataLayout | None = None,
    grid: Iterable[float] = DEFAULT_GRID,
    options: InferenceOptions | None = None,
) -> ThresholdResult:
    """Fit the decision threshold of a run on its own validation fold; writes ``threshold.json``.

    ``threshold.json``: ``threshold`` and ``dice`` (best on ``grid``), ``dice_at_0.5``, the
    ``grid`` table (tp/fp/fn/tn and scores per threshold) and the inference options used (the
    threshold fits the probabilities of *these* options: TTA or bf16 shift them slightly).
    Tiles are not written to disk; counts accumulate batch by batch.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    options = options or InferenceOptions()
    if layout is not None and options.data_dir is None:  # a reference run finds its stats there
        options = dataclasses.replace(options, data_dir=layout.root)
    run = load_inference_run(run_dir, options)
    layout = layout or DataLayout(Path(run.config.data_dir))
    ids = validation_tiles(run_dir, run.config, layout)
    images, masks = _val_paths(ids, layout)
    validate_inputs(images, progress=False)
    acc = ThresholdAccumulator(grid)
    at_half = ConfusionCounts()
    for _, probs, truth in iter_probabilities(run, images, options, masks):
        acc.update(probs, truth)
        at_half = at_half + ConfusionCounts.from_arrays(binarize(probs, 0.5), truth)
    result = acc.result()
    payload = result.to_dict()
    payload["dice_at_0.5"] = at_half.scores()["dice"]
    payload["n_tiles"] = len(ids)
    payload.update(options.to_dict())
    payload.update(
        checkpoint=str(getattr(run, "checkpoint", options.checkpoint)),
        seconds=round(time.perf_counter() - started, 2),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    payload["threshold_on_grid_edge"] = acc.grid.size > 1 and result.threshold in (acc.grid[0], acc.grid[-1])
    write_json(RunLayout(run_dir).threshold, payload)
    if payload["threshold_on_grid_edge"]:
        log.warning(
            "run %s: the best threshold %.2f is the edge of the grid %.2f-%.2f; the model is badly "
            "calibrated on its validation fold (train longer, or check the loss)",
            run_dir,
            result.threshold,
            acc.grid[0],
            acc.grid[-1],
        )
    log.info(
        "run %s: threshold %.2f, dice %.4f (%.4f at 0.5)",
        run_dir,
        result.threshold,
        result.dice,
        payload["dice_at_0.5"],
    )
    return result
