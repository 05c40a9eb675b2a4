"""The tile catalog: one row per tile with its split and file paths, from the metadata CSV."""

from __future__ import annotations

import pandas as pd

from kelpseg.errors import MetadataError
from kelpseg.io.metadata import KELP, SATELLITE, load_metadata
from kelpseg.layout import DataLayout

CATALOG_COLUMNS = ("tile_id", "split", "image_path", "mask_path")


def catalog_from_metadata(meta: pd.DataFrame, layout: DataLayout) -> pd.DataFrame:
    """Build the catalog (tile_id, split, image_path, mask_path) from a loaded metadata table.

    ``mask_path`` is None for test tiles. Rows are sorted by split (train first) then tile id,
    so every stage sees the same order.
    """
    sat = meta[meta["type"] == SATELLITE]
    if sat.empty:
        raise MetadataError(f"{layout.metadata_csv}: no 'satellite' rows")
    has_mask = set(meta.loc[meta["type"] == KELP, "tile_id"])
    split = sat["in_train"].map({True: "train", False: "test"})
    image_paths = [str(layout.image_path(t, s)) for t, s in zip(sat["tile_id"], split, strict=True)]
    mask_paths = [
        str(layout.mask_path(t)) if s == "train" else None for t, s in zip(sat["tile_id"], split, strict=True)
    ]
    cat = pd.DataFrame(
        {
            "tile_id": sat["tile_id"].to_numpy(),
            "split": split.to_numpy(),
            "image_path": image_paths,
            "mask_path": mask_paths,
        }
    )
    cat["listed_mask"] = cat["tile_id"].isin(has_mask)
    cat = cat.sort_values(["split", "tile_id"], ascending=[False, True], kind="stable")
    return cat.reset_index(drop=True)


def load_catalog(layout: DataLayout) -> pd.DataFrame:
    """Catalog of the data dir's metadata CSV (see :func:`catalog_from_metadata`)."""
    return catalog_from_metadata(load_metadata(layout.metadata_csv), layout)


def train_catalog(layout: DataLayout) -> pd.DataFrame:
    cat = load_catalog(layout)
    return cat[cat["split"] == "train"].reset_index(drop=True)
