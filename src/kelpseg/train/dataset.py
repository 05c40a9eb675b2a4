"""Per-tile dataset: raw tiles and masks, read in DataLoader workers (from GeoTIFF or the tile cache).

Items are deliberately raw: all 7 bands in file order as float32 DN with NaN at the competition
fill value, and the 0/1 mask as uint8. Band selection, indices, normalisation and padding happen
on whole batches in :class:`kelpseg.train.transforms.BatchTransform`, which is part of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from kelpseg.bands import TILE_SIZE
from kelpseg.io.tiles import read_mask, read_tile
from kelpseg.train.cache import TileCache, optional_path


class KelpTileDataset(Dataset[dict[str, Any]]):
    """``{"image": (7, 350, 350) float32 NaN at fill, "mask": (350, 350) uint8, "tile_id": str}``.

    ``mask_paths`` may be None (no masks: zeros), or hold None for single tiles without a mask.
    With a ``cache``, tiles found in it are read from the memory-mapped arrays, others from their
    files.
    """

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        mask_paths: Sequence[str | Path | None] | None,
        tile_ids: Sequence[str],
        cache: TileCache | None = None,
    ) -> None:
        self.image_paths = [str(p) for p in image_paths]
        self.tile_ids = [str(t) for t in tile_ids]
        if len(self.image_paths) != len(self.tile_ids):
            raise ValueError(f"{len(self.image_paths)} image paths for {len(self.tile_ids)} tile ids")
        if mask_paths is None:
            self.mask_paths: list[str | None] = [None] * len(self.tile_ids)
        else:
            self.mask_paths = [optional_path(p) for p in mask_paths]
            if len(self.mask_paths) != len(self.tile_ids):
                raise ValueError(f"{len(self.mask_paths)} mask paths for {len(self.tile_ids)} tile ids")
        self.cache = cache

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, cache: TileCache | None = None) -> KelpTileDataset:
        """From a table with ``tile_id``, ``image_path`` and (optionally) ``mask_path`` columns."""
        masks = frame["mask_path"].tolist() if "mask_path" in frame.columns else None
        return cls(frame["image_path"].tolist(), masks, frame["tile_id"].tolist(), cache=cache)

    def __len__(self) -> int:
        return len(self.tile_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        tile_id = self.tile_ids[index]
        if self.cache is not None and tile_id in self.cache:
            image = self.cache.read_tile(tile_id)
            mask = self.cache.read_mask(tile_id)
        else:
            image = read_tile(self.image_paths[index])
            path = self.mask_paths[index]
            mask = read_mask(path) if path is not None else np.zeros((TILE_SIZE, TILE_SIZE), np.uint8)
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "tile_id": tile_id}
