"""Small builders of competition-format files for tests (no synthetic realism needed)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from kelpseg.bands import FILL_VALUE, TILE_SIZE
from kelpseg.io.integrity import md5sum
from kelpseg.io.metadata import write_metadata
from kelpseg.io.tiles import write_geotiff
from kelpseg.layout import DataLayout


def random_tile(seed: int = 0, dtype: str = "int16") -> np.ndarray:
    rng = np.random.default_rng(seed)
    tile = rng.integers(5000, 12000, size=(7, TILE_SIZE, TILE_SIZE)).astype(dtype)
    tile[5] = 0  # QA
    tile[6] = rng.integers(-5, 30, size=(TILE_SIZE, TILE_SIZE))  # DEM
    tile[6, :20, :] = FILL_VALUE
    return tile


def write_dataset(root: Path, train_ids: list[str], test_ids: list[str], seed: int = 0) -> DataLayout:
    """Write a tiny valid dataset (random pixels) with a six-column metadata CSV."""
    layout = DataLayout(root)
    rows = []
    for i, tid in enumerate(train_ids):
        img = write_geotiff(layout.image_path(tid, "train"), random_tile(seed + i), "int16")
        mask = np.zeros((TILE_SIZE, TILE_SIZE), np.uint8)
        mask[100 : 110 + i, 50:60] = 1
        msk = write_geotiff(layout.mask_path(tid), mask, "uint8")
        rows.append((tid, img, "satellite", True))
        rows.append((tid, msk, "kelp", True))
    for i, tid in enumerate(test_ids):
        img = write_geotiff(layout.image_path(tid, "test"), random_tile(seed + 100 + i), "int16")
        rows.append((tid, img, "satellite", False))
    meta = pd.DataFrame(
        [
            {
                "tile_id": tid,
                "filename": path.name,
                "md5_hash": md5sum(path),
                "filesize_bytes": path.stat().st_size,
                "type": kind,
                "in_train": in_train,
            }
            for tid, path, kind, in_train in rows
        ]
    )
    write_metadata(layout.metadata_csv, meta)
    return layout


def prepared_synthetic(
    root: Path,
    n_train: int,
    n_test: int,
    n_folds: int,
    seed: int,
    indices: list[str] | None = None,
    synth: object | None = None,
) -> DataLayout:
    """Generate a tiny synthetic dataset and run the preparation stages.

    Band stats cover ``indices`` (default: DEMWM and NDVI, what ``tiny_train_config`` uses);
    ``synth`` is a ``kelpseg.synthetic.SynthConfig`` (default: the generator's defaults).
    Test modules asking for the same dataset get copies of one prepared in this session.
    """
    key = (n_train, n_test, n_folds, seed, tuple(indices or ()), repr(synth))
    if key not in _PREPARED:
        template = _templates_dir() / str(len(_PREPARED)) / "data"
        _prepare(template, n_train, n_test, n_folds, seed, indices, synth)
        _PREPARED[key] = template
    shutil.copytree(_PREPARED[key], root)
    return DataLayout(root)


_PREPARED: dict[tuple, Path] = {}


@functools.cache
def _templates_dir() -> Path:
    """This session's folder of prepared datasets, removed when the test process exits."""
    path = Path(tempfile.mkdtemp(prefix="kelpseg-test-templates-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _prepare(
    root: Path,
    n_train: int,
    n_test: int,
    n_folds: int,
    seed: int,
    indices: list[str] | None,
    synth: object | None,
) -> None:
    from kelpseg.prep.aoi import group_aois
    from kelpseg.prep.band_stats import compute_band_stats
    from kelpseg.prep.eda import run_eda
    from kelpseg.prep.split import make_cv_split
    from kelpseg.synthetic import generate_dataset

    generate_dataset(root, n_train, n_test, seed=seed, workers=2, progress=False, config=synth)
    layout = DataLayout(root)
    group_aois(layout, workers=2, progress=False)
    run_eda(layout, workers=2, progress=False)
    compute_band_stats(layout, indices=indices or ["DEMWM", "NDVI"], workers=2, progress=False)
    make_cv_split(layout, n_splits=n_folds)


def tiny_train_config(layout: DataLayout, out: Path, steps: int, **overrides: object):
    """A training config that runs in seconds on CPU: 3-stage ResNet-18 UNet, 64 px crops."""
    from kelpseg.train.config import TrainConfig

    options: dict[str, object] = {
        "data_dir": str(layout.root),
        "output_dir": str(out),
        "encoder": "resnet18",
        "decoder_channels": [16, 8, 4],
        "spectral_indices": ["DEMWM", "NDVI"],
        "train_crop_size": 64,
        "batch_size": 2,
        "samples_per_epoch": 2 * steps,
        "num_workers": 0,
        "epochs": 2,
        "limit_val_batches": 2,
        "preview_n_tiles": 0,
        "accelerator": "cpu",
        "devices": 1,
        "mlflow": False,
    }
    options.update(overrides)
    return TrainConfig(**options)


# ---- a trained run in seconds (scene mapping tests) ----------------------------------------------
def tiny_run_dir(root: Path) -> Path:
    """Train a 1-step ResNet-18 UNet on three random tiles; returns its run dir (~20 s on a CPU)."""
    from kelpseg.prep.band_stats import compute_band_stats
    from kelpseg.train.run import train

    ids = ["A1", "A2", "A3"]
    layout = write_dataset(root / "data", ids, [])
    split = pd.DataFrame(
        {"tile_id": ids, "original_split": ["train"] * 3, "split_0": ["train", "train", "val"]}
    )
    layout.split_path("cross_val").parent.mkdir(parents=True, exist_ok=True)
    split.to_parquet(layout.split_path("cross_val"), index=False)
    compute_band_stats(layout, indices=["DEMWM", "NDVI"], workers=1, progress=False)
    config = tiny_train_config(
        layout,
        root / "runs",
        steps=1,
        epochs=1,
        run_name="tiny",
        limit_val_batches=1,
        use_weighted_sampler=False,
    )
    return train(config, layout, progress=False)
