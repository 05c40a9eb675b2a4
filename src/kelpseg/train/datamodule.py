"""Lightning data module: one CV fold of the split table, joined to the catalog, as DataLoaders.

Inputs (both outputs of earlier stages; a clear error says which ``make`` target to run if one is
missing):

* the CV split parquet (``config.split_path`` or ``DataLayout.split_path("cross_val")``); fold k is
  its column ``split_k`` with values ``train`` / ``val`` / ``test``;
* the band-stats JSON (``config.band_stats_path`` or the layout's file for the masking options).

Everything cheap is loaded in the constructor (tables, stats, the transform), so the training
module can be built from ``.transform`` before ``Trainer.fit`` calls ``setup``. Loaders return raw
batches (see :mod:`kelpseg.train.dataset`); the LightningModule applies the ``BatchTransform`` and
the augmentation, so the transform travels with the model into checkpoints and inference.

The optional tile cache (``config.use_cache``) holds every train and val tile of the split table
(the same tiles for every fold), so one cache serves all folds and epochs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from kelpseg.errors import KelpsegError, StageNotRunError
from kelpseg.io.catalog import load_catalog
from kelpseg.layout import DataLayout
from kelpseg.parallel import process_context
from kelpseg.train.cache import TileCache
from kelpseg.train.config import TrainConfig
from kelpseg.train.dataset import KelpTileDataset
from kelpseg.train.sampler import SamplerFactors, make_sampler, sampler_weights_by_tile
from kelpseg.train.transforms import BatchTransform, TransformingCollate

TRAIN, VAL = "train", "val"


def read_split_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise StageNotRunError.missing(path, "split", "train-val-test-split-cv", what="CV split")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise KelpsegError(f"{path}: unreadable split parquet ({exc})") from None
    if "tile_id" not in frame.columns:
        raise KelpsegError(f"{path}: expected a 'tile_id' column in the split table")
    return frame


def fold_columns(frame: pd.DataFrame) -> list[str]:
    """The ``split_<k>`` columns of a split table, by fold number."""
    cols = [c for c in frame.columns if c.startswith("split_") and c.removeprefix("split_").isdigit()]
    return sorted(cols, key=lambda c: int(c.removeprefix("split_")))


def load_stats(path: Path) -> Any:
    if not path.is_file():
        raise StageNotRunError.missing(path, "band-stats", "calculate-band-stats", what="band stats")
    from kelpseg.prep.band_stats import BandStats, load_band_stats
    from kelpseg.reference.stats import (
        is_reference_stats_file,
        read_reference_stats,
        repaired_for_training,
        stats_name_options,
    )

    if is_reference_stats_file(
        path
    ):  # the reference's stats JSON: its non-finite min/max become finite fill values
        options = stats_name_options(path.name)
        recorded = dict(
            zip(("fill_value", "mask_using_qa", "mask_using_water_mask"), options or (), strict=False)
        )
        return BandStats(repaired_for_training(read_reference_stats(path)), recorded, 0, path)
    return load_band_stats(path)


def _join_paths(rows: pd.DataFrame, catalog: pd.DataFrame, split_path: Path) -> pd.DataFrame:
    """``rows`` (row order kept) with the catalog's image_path / mask_path, matched by tile_id."""
    paths = catalog[["tile_id", "image_path", "mask_path"]]
    drop = [c for c in ("image_path", "mask_path") if c in rows.columns]
    joined = rows.drop(columns=drop).merge(paths, on="tile_id", how="left", validate="one_to_one")
    missing = joined["image_path"].isna()
    if missing.any():
        ids = joined.loc[missing, "tile_id"].head(5).tolist()
        raise KelpsegError(
            f"{split_path}: {int(missing.sum())} tile(s) are not in the metadata catalog, e.g. {ids}; "
            "was the split made from another data directory?"
        )
    return joined.reset_index(drop=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class KelpDataModule(L.LightningDataModule):
    """Train / val loaders of fold ``config.fold``; exposes ``band_stats``, frames and ``transform``."""

    def __init__(self, config: TrainConfig, layout: DataLayout | None = None) -> None:
        super().__init__()
        self.config = config
        self.layout = layout if layout is not None else DataLayout(Path(config.data_dir))
        self.split_path = config.resolved_split_path(self.layout)
        self.band_stats_path = config.resolved_band_stats_path(self.layout)
        self.split_table = read_split_table(self.split_path)
        self.band_stats = load_stats(self.band_stats_path)
        self.fold_column = f"split_{config.fold}"
        folds = fold_columns(self.split_table)
        if self.fold_column not in self.split_table.columns:
            raise KelpsegError(
                f"{self.split_path}: no column {self.fold_column!r} for fold {config.fold}; "
                f"folds available: {', '.join(c.removeprefix('split_') for c in folds) or 'none'}"
            )
        catalog = load_catalog(self.layout)
        column = self.split_table[self.fold_column]
        self.train_frame = _join_paths(self.split_table[column == TRAIN], catalog, self.split_path)
        self.val_frame = _join_paths(self.split_table[column == VAL], catalog, self.split_path)
        if self.train_frame.empty:
            raise KelpsegError(f"{self.split_path}: fold {config.fold} has no 'train' rows")
        self.transform = BatchTransform.from_config(config, self.band_stats)
        self.cache: TileCache | None = None
        self.train_dataset: KelpTileDataset | None = None
        self.val_dataset: KelpTileDataset | None = None
        self._sampler_generator = torch.Generator().manual_seed(int(config.seed))

    # ---- facts for the run directory -----------------------------------------------------------
    def split_info(self) -> dict[str, Any]:
        """What ``split.json`` records: the split file, its sha256, the fold and its tile ids."""
        return {
            "path": str(self.split_path),
            "sha256": file_sha256(self.split_path),
            "fold": int(self.config.fold),
            "column": self.fold_column,
            "train_tile_ids": self.train_frame["tile_id"].tolist(),
            "val_tile_ids": self.val_frame["tile_id"].tolist(),
        }

    def sampler_weights(self) -> pd.Series:
        """Sampling weight of every training tile, indexed by tile_id (see :mod:`kelpseg.train.sampler`)."""
        return sampler_weights_by_tile(self.train_frame, SamplerFactors.from_config(self.config))

    # ---- Lightning hooks -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build the tile cache if asked for (Lightning calls this once per node, before ``setup``)."""
        if self.config.use_cache:
            self._open_cache()

    def setup(self, stage: str | None = None) -> None:
        cache = self._open_cache() if self.config.use_cache else None
        self.train_dataset = KelpTileDataset.from_frame(self.train_frame, cache=cache)
        self.val_dataset = KelpTileDataset.from_frame(self.val_frame, cache=cache)

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        batch_size = int(self.config.batch_size)
        if self.config.use_weighted_sampler:
            weights = self.sampler_weights().loc[self.train_dataset.tile_ids].to_numpy()
            n_samples = int(self.config.samples_per_epoch)
            sampler = make_sampler(weights, n_samples, generator=self._sampler_generator)
            return self._loader(self.train_dataset, sampler=sampler, drop_last=n_samples > batch_size)
        return self._loader(
            self.train_dataset,
            shuffle=True,
            generator=self._sampler_generator,
            drop_last=len(self.train_dataset) > batch_size,
        )

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        if self.val_dataset is None:
            self.setup("validate")
        assert self.val_dataset is not None
        sampler = self._unrepeated_sampler(self.val_dataset)
        return self._loader(self.val_dataset, shuffle=False, sampler=sampler)

    def _unrepeated_sampler(self, dataset: KelpTileDataset) -> Any:
        """Under DDP, give each process a disjoint share of the validation tiles, none twice.

        Lightning's default (a padded ``DistributedSampler``) repeats tiles to even out the
        shares, which would count them twice in the global Dice. ``None`` in a single process.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def num_workers(self) -> int:
        """``config.num_workers``, capped at the machine's CPU count."""
        return max(0, min(int(self.config.num_workers), os.cpu_count() or 1))

    def transforms_in_workers(self) -> bool:
        """Whether the loaders' workers apply ``transform`` (``config.transform_in_workers``):
        never on a GPU, without workers or with a random crop (the step crops the raw tile first)."""
        wanted = self.config.transform_in_workers
        if wanted is False or self.num_workers == 0 or self.config.train_crop_size is not None:
            return False
        trainer = getattr(self, "trainer", None)
        strategy = getattr(trainer, "strategy", None) if trainer is not None else None
        device = getattr(strategy, "root_device", None)
        on_cpu = device.type == "cpu" if device is not None else not torch.cuda.is_available()
        return on_cpu

    def _loader(self, dataset: KelpTileDataset, **kwargs: Any) -> DataLoader[dict[str, Any]]:
        workers = self.num_workers
        collate = TransformingCollate(self.transform) if self.transforms_in_workers() else None
        return DataLoader(
            dataset,
            batch_size=int(self.config.batch_size),
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
            multiprocessing_context=process_context() if workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def _open_cache(self) -> TileCache:
        if self.cache is None:
            frame = pd.concat([self.train_frame, self.val_frame])  # the same tiles for every fold
            self.cache = TileCache.open_or_build(
                self.layout.cache_dir,
                frame["tile_id"].tolist(),
                frame["image_path"].tolist(),
                frame["mask_path"].tolist(),
                workers=max(1, self.num_workers),
            )
        return self.cache
