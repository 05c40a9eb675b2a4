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

A training run directory (``<output_dir>/<run_name>/``, written by :mod:`kelpseg.train.run`) is
described by :class:`RunLayout`: every file name of that format is defined there and only there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from kelpseg.errors import KelpsegError

METADATA_FILENAME = "metadata_fTq0l2T.csv"
IMAGE_SUFFIX = "_satellite.tif"
MASK_SUFFIX = "_kelp.tif"
DEFAULT_DATA_DIR = Path("data")
#: Split strategies, as named in the split file (``train_val_test_dataset_strategy=<name>.parquet``).
SPLIT_STRATEGIES = ("cross_val", "random")
#: How missing pixels are filled before band statistics, as named in the band-stats file.
FILL_VALUE_NAMES = ("nan", "0")


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


# ---- training run directories -------------------------------------------------------------------
#: Run names (and sweep names, which prefix trial run names) are folder names: no separators.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9._=+-]+")
RUN_NAME_CHARS = "letters, digits and . _ = + -"


def is_valid_run_name(name: str) -> bool:
    return RUN_NAME_PATTERN.fullmatch(name) is not None


class _InRun:
    """A file or folder of a run directory as an attribute: ``RunLayout(root).summary`` is
    ``root / "summary.json"`` (on the class, the relative path)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, layout: RunLayout | None, owner: type | None = None) -> Path:
        return Path(self.name) if layout is None else layout.root / self.name


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one kelpseg training run directory::

        config.yaml           the resolved TrainConfig (run_name filled in)
        band_stats.json       copy of the band statistics used
        split.json            split parquet path + sha256, fold, train / val tile ids
        mlflow.json           tracking URI, experiment and run id (when MLflow is on)
        checkpoints/best.ckpt best epoch by ``monitor_metric``
        checkpoints/last.ckpt end of the latest epoch
        metrics.csv           one row per epoch
        previews/epoch=EEE.png
        summary.json          best score and epoch, epochs done, wall time, status
        threshold.json        decision threshold fitted on the validation fold (``kelpseg eval``)
        provenance.json       kelpseg version, git commit, lock file hash, key library versions

    Other run-directory formats (e.g. another tool's) are recognised by :func:`detect_run_format`;
    a format is a class with a ``kind`` and a ``matches(root)`` classmethod, registered with
    :func:`register_run_format`.
    """

    root: Path

    kind: ClassVar[str] = "kelpseg"
    CONFIG: ClassVar[str] = "config.yaml"
    BAND_STATS: ClassVar[str] = "band_stats.json"
    SPLIT: ClassVar[str] = "split.json"
    MLFLOW: ClassVar[str] = "mlflow.json"
    METRICS: ClassVar[str] = "metrics.csv"
    SUMMARY: ClassVar[str] = "summary.json"
    THRESHOLD: ClassVar[str] = "threshold.json"
    PROVENANCE: ClassVar[str] = "provenance.json"
    CHECKPOINT_DIR: ClassVar[str] = "checkpoints"
    PREVIEW_DIR: ClassVar[str] = "previews"
    #: Checkpoint names that ``checkpoint(name)`` resolves inside ``checkpoints/``.
    CHECKPOINT_NAMES: ClassVar[tuple[str, ...]] = ("best", "last")
    #: The small files that describe a run (what a sweep trial's checkpoint carries with ``checkpoints/``).
    SMALL_FILES: ClassVar[tuple[str, ...]] = (CONFIG, BAND_STATS, SPLIT, MLFLOW, METRICS, SUMMARY, PROVENANCE)
    #: What MLflow receives as artifacts at the end of a run.
    ARTIFACT_FILES: ClassVar[tuple[str, ...]] = (CONFIG, METRICS, SUMMARY, SPLIT, BAND_STATS, PROVENANCE)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, output_dir: str | Path, run_name: str) -> RunLayout:
        """The run directory ``<output_dir>/<run_name>``."""
        return cls(Path(output_dir) / run_name)

    @classmethod
    def matches(cls, root: str | Path) -> bool:
        """Whether ``root`` is a kelpseg run directory (it has a ``config.yaml``)."""
        return (Path(root) / cls.CONFIG).is_file()

    @property
    def name(self) -> str:
        return self.root.name

    config = _InRun(CONFIG)
    band_stats = _InRun(BAND_STATS)
    split = _InRun(SPLIT)
    mlflow = _InRun(MLFLOW)
    metrics = _InRun(METRICS)
    summary = _InRun(SUMMARY)
    threshold = _InRun(THRESHOLD)
    provenance = _InRun(PROVENANCE)
    checkpoints = _InRun(CHECKPOINT_DIR)
    previews = _InRun(PREVIEW_DIR)

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint("best")

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint("last")

    def checkpoint(self, name: str) -> Path:
        """``best`` / ``last`` -> ``checkpoints/<name>.ckpt``; any other value is taken as a file path."""
        return self.checkpoints / f"{name}.ckpt" if name in self.CHECKPOINT_NAMES else Path(name)


#: Recognised run-directory formats, tried in order by :func:`detect_run_format`.
_RUN_FORMATS: list[type] = [RunLayout]


def register_run_format(fmt: type, first: bool = False) -> type:
    """Add a run-directory format: a class with ``kind: str`` and ``matches(root) -> bool``.

    Usable as a decorator. ``first=True`` tries it before the formats already known.
    """
    if not isinstance(getattr(fmt, "kind", None), str) or not callable(getattr(fmt, "matches", None)):
        raise TypeError(f"{fmt!r}: a run format needs a `kind` string and a `matches(root)` classmethod")
    _RUN_FORMATS.insert(0, fmt) if first else _RUN_FORMATS.append(fmt)
    return fmt


def run_formats() -> list[str]:
    return [f.kind for f in _RUN_FORMATS]


def detect_run_format(root: str | Path) -> str | None:
    """The ``kind`` of the first registered format that recognises ``root``; None for none."""
    return next((f.kind for f in _RUN_FORMATS if f.matches(Path(root))), None)


# ---- run directories of the reference solution ------------------------------------------------
# Every layout its ``predict.py`` accepts (reference-system.md §5.1):
#
# * Azure ML export (``Job_<name>_OutputsAndLogs/``, the published models): ``model/`` and
#   ``config.yaml`` at the root, which is then the artifacts folder;
# * MLflow run (``mlruns/<exp>/<run>/``): the same under ``artifacts/``.
#
# Checkpoints, under ``<artifacts>/model/checkpoints/``: ``best`` is the first sub-folder (sorted)
# whose ``aliases.txt`` names ``'best'`` (file ``<dir>/<dir>.ckpt``); ``latest`` (kelpseg's
# ``last`` means the same) is ``last/last.ckpt``; any other value is a file path. Without
# ``checkpoints/``, ``<artifacts>/model`` is an MLflow pytorch model folder (``MLmodel``).
# Registered before kelpseg's own format: an Azure ML export also has a ``config.yaml``.
REF_CONFIG = "config.yaml"
REF_MODEL_DIR = "model"
REF_ARTIFACTS_DIR = "artifacts"
REF_CHECKPOINTS = "checkpoints"
REF_ALIASES = "aliases.txt"
REF_MLFLOW_MODEL_FILE = "MLmodel"
REF_LATEST_NAMES = ("latest", "last")


class ReferenceRunError(KelpsegError):
    """A reference run directory lacks what its format requires."""


@dataclass(frozen=True)
class ReferenceRunLayout:
    """Paths inside a run directory of the reference solution (see the comment above)."""

    root: Path

    kind: ClassVar[str] = "reference"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def matches(cls, root: str | Path) -> bool:
        root = Path(root)
        return (
            (root / REF_MODEL_DIR).is_dir()
            or (root / REF_ARTIFACTS_DIR / REF_MODEL_DIR).is_dir()
            or ((root / REF_ARTIFACTS_DIR / REF_CONFIG).is_file())
        )

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def artifacts(self) -> Path:
        if (self.root / REF_MODEL_DIR).exists():
            return self.root
        if (self.root / REF_ARTIFACTS_DIR).exists():
            return self.root / REF_ARTIFACTS_DIR
        raise ReferenceRunError(
            f"{self.root}: not a run directory: expected {REF_MODEL_DIR}/ (Azure ML export) or "
            f"{REF_ARTIFACTS_DIR}/ (MLflow run) in it"
        )

    @property
    def config(self) -> Path:
        return self.artifacts / REF_CONFIG

    @property
    def model_dir(self) -> Path:
        return self.artifacts / REF_MODEL_DIR

    @property
    def checkpoints(self) -> Path:
        return self.model_dir / REF_CHECKPOINTS

    @property
    def threshold(self) -> Path:
        """Where ``kelpseg eval`` stores the fitted threshold (same name as in kelpseg runs)."""
        return self.root / RunLayout.THRESHOLD

    def is_mlflow_model(self) -> bool:
        return not self.checkpoints.is_dir() and (self.model_dir / REF_MLFLOW_MODEL_FILE).is_file()

    def checkpoint(self, name: str = "best") -> Path:
        """The checkpoint file for ``best`` / ``latest`` (``last``) / a path; errors name the folder."""
        if name not in ("best", *REF_LATEST_NAMES):
            path = Path(name)
            if not path.is_file():
                raise ReferenceRunError(f"{path}: checkpoint not found")
            return path
        if not self.checkpoints.is_dir():
            if self.is_mlflow_model():
                return self.model_dir
            raise ReferenceRunError(
                f"{self.model_dir}: no {REF_CHECKPOINTS}/ folder and no MLflow model "
                f"({REF_MLFLOW_MODEL_FILE})"
            )
        if name in REF_LATEST_NAMES:
            path = self.checkpoints / "last" / "last.ckpt"
            if not path.is_file():
                raise ReferenceRunError(f"{path}: the latest checkpoint is missing")
            return path
        for folder in sorted(p for p in self.checkpoints.iterdir() if p.is_dir()):
            aliases = folder / REF_ALIASES
            if aliases.is_file() and "'best'" in aliases.read_text():
                path = folder / f"{folder.name}.ckpt"
                if not path.is_file():
                    raise ReferenceRunError(f"{path}: checkpoint aliased 'best' is missing")
                return path
        raise ReferenceRunError(f"{self.checkpoints}: no checkpoint folder whose {REF_ALIASES} names 'best'")


register_run_format(ReferenceRunLayout, first=True)
