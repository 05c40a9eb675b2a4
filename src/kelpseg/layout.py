"""Every path the pipeline reads or writes, in one place.

A data directory (default ``./data``) holds::

    raw/train/images/<tile_id>_satellite.tif
    raw/train/masks/<tile_id>_kelp.tif
    raw/test/images/<tile_id>_satellite.tif
    raw/metadata_fTq0l2T.csv
    truth/                      synthetic data only: test masks + AOI membership (evaluation only)
    processed/                  outputs of the preparation stages
    predictions/                per-tile predictions
    submissions/                submission archives
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METADATA_FILENAME = "metadata_fTq0l2T.csv"
IMAGE_SUFFIX = "_satellite.tif"
MASK_SUFFIX = "_kelp.tif"
DEFAULT_DATA_DIR = Path("data")


def tile_id_from_path(path: str | Path) -> str:
    """Tile id of a competition file: the file stem cut at its first underscore."""
    return Path(path).name.split("_", 1)[0]


def image_name(tile_id: str) -> str:
    return f"{tile_id}{IMAGE_SUFFIX}"


def mask_name(tile_id: str) -> str:
    return f"{tile_id}{MASK_SUFFIX}"


@dataclass(frozen=True)
class DataLayout:
    """Paths under one data directory."""

    root: Path = DEFAULT_DATA_DIR

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---- raw competition data -------------------------------------------------------------
    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def metadata_csv(self) -> Path:
        return self.raw / METADATA_FILENAME

    def split_dir(self, split: str) -> Path:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.raw / split

    def images_dir(self, split: str) -> Path:
        return self.split_dir(split) / "images"

    @property
    def train_images(self) -> Path:
        return self.images_dir("train")

    @property
    def train_masks(self) -> Path:
        return self.split_dir("train") / "masks"

    @property
    def test_images(self) -> Path:
        return self.images_dir("test")

    def image_path(self, tile_id: str, split: str) -> Path:
        return self.images_dir(split) / image_name(tile_id)

    def mask_path(self, tile_id: str) -> Path:
        return self.train_masks / mask_name(tile_id)

    # ---- synthetic ground truth (evaluation tools only) -----------------------------------
    @property
    def truth(self) -> Path:
        return self.root / "truth"

    @property
    def truth_test_masks(self) -> Path:
        return self.truth / "test" / "masks"

    @property
    def truth_aoi_table(self) -> Path:
        return self.truth / "aoi_membership.csv"

    # ---- outputs --------------------------------------------------------------------------
    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def plots_dir(self) -> Path:
        return self.processed / "plots"

    @property
    def composites_dir(self) -> Path:
        return self.processed / "composites"

    @property
    def aoi_dir(self) -> Path:
        return self.processed / "aoi"

    @property
    def aoi_table(self) -> Path:
        return self.aoi_dir / "aoi_groups.parquet"

    @property
    def aoi_groups_json(self) -> Path:
        return self.aoi_dir / "aoi_groups.json"

    @property
    def aoi_report(self) -> Path:
        return self.aoi_dir / "aoi_report.json"

    @property
    def eda_dir(self) -> Path:
        return self.processed / "eda"

    @property
    def eda_stats(self) -> Path:
        return self.eda_dir / "dataset_stats.parquet"

    @property
    def band_stats_dir(self) -> Path:
        return self.processed / "band_stats"

    def band_stats_path(self, fill_value: str, mask_using_qa: bool, mask_using_water_mask: bool) -> Path:
        """Band-stats JSON; the file name records the options, as the reference's does."""
        name = (
            f"stats-fill_value={fill_value}-mask_using_qa={mask_using_qa}"
            f"-mask_using_water_mask={mask_using_water_mask}.json"
        )
        return self.band_stats_dir / name

    def split_path(self, strategy: str = "cross_val") -> Path:
        return self.processed / f"train_val_test_dataset_strategy={strategy}.parquet"

    @property
    def cache_dir(self) -> Path:
        return self.processed / "cache"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"
