"""``check-data``: is a data directory a complete, readable Kelp Wanted dataset?

Every problem is collected (not just the first) as a :class:`Problem` naming the file and
what was expected, so a user can fix everything in one go.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kelpseg.errors import KelpsegError
from kelpseg.io.metadata import KELP, SATELLITE, load_metadata
from kelpseg.io.tiles import read_mask, read_raw_tile
from kelpseg.layout import IMAGE_SUFFIX, MASK_SUFFIX, DataLayout
from kelpseg.parallel import pmap


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class IntegrityReport:
    data_dir: Path
    n_train: int = 0
    n_test: int = 0
    n_files_checked: int = 0
    checksums: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_file(args: tuple[str, str, str | None, float | None, bool]) -> list[Problem]:
    """Check one listed file: readable, right shape/bands/dtype, optional md5/size."""
    path_s, kind, md5, size, checksums = args
    path = Path(path_s)
    problems: list[Problem] = []
    if not path.exists():
        return [Problem(path_s, f"listed in the metadata as a {kind} file but not found")]
    if checksums:
        actual_size = path.stat().st_size
        if size is not None and not np.isnan(size) and int(size) != actual_size:
            problems.append(Problem(path_s, f"size {actual_size} bytes, metadata says {int(size)}"))
        if md5 and isinstance(md5, str):
            actual = md5sum(path)
            if actual != md5.strip().lower():
                problems.append(Problem(path_s, f"md5 {actual}, metadata says {md5}"))
    try:
        if kind == SATELLITE:
            data = read_raw_tile(path)
            if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
                problems.append(Problem(path_s, f"expected integer or float pixels, got {data.dtype}"))
        else:
            read_mask(path)
    except KelpsegError as exc:
        # The error message already starts with the path.
        msg = str(exc)
        problems.append(Problem(path_s, msg.split(": ", 1)[1] if msg.startswith(path_s) else msg))
    return problems


def _expected_files(meta: pd.DataFrame, layout: DataLayout) -> pd.DataFrame:
    split = np.where(meta["in_train"], "train", "test")
    paths = [
        str(layout.image_path(t, s)) if k == SATELLITE else str(layout.mask_path(t))
        for t, s, k in zip(meta["tile_id"], split, meta["type"], strict=True)
    ]
    return meta.assign(path=paths, split=split)


def check_data(
    layout: DataLayout, checksums: bool = False, workers: int = 2, progress: bool = True
) -> IntegrityReport:
    """Verify the data dir against its metadata CSV; never raises for data problems."""
    report = IntegrityReport(layout.root, checksums=checksums)
    try:
        meta = load_metadata(layout.metadata_csv)
    except KelpsegError as exc:
        report.problems.append(Problem(str(layout.metadata_csv), str(exc).split(": ", 1)[-1]))
        return report
    files = _expected_files(meta, layout)
    sat = files[files["type"] == SATELLITE]
    report.n_train = int((sat["split"] == "train").sum())
    report.n_test = int((sat["split"] == "test").sum())

    # Every train image needs a mask row; masks need an image row.
    train_ids = set(sat.loc[sat["split"] == "train", "tile_id"])
    mask_ids = set(files.loc[files["type"] == KELP, "tile_id"])
    for tid in sorted(train_ids - mask_ids):
        report.problems.append(
            Problem(str(layout.image_path(tid, "train")), "train image has no mask row in the metadata")
        )
    for tid in sorted(mask_ids - train_ids):
        report.problems.append(Problem(str(layout.mask_path(tid)), "mask listed without a train image"))

    jobs = [
        (p, k, m, s, checksums)
        for p, k, m, s in zip(
            files["path"], files["type"], files["md5_hash"], files["filesize_bytes"], strict=True
        )
    ]
    for probs in pmap(_check_file, jobs, workers=workers, progress=progress, desc="check-data"):
        report.problems.extend(probs)
    report.n_files_checked = len(jobs)

    # Unlisted extra files in the three data folders.
    listed = set(files["path"])
    for folder, suffix in (
        (layout.train_images, IMAGE_SUFFIX),
        (layout.train_masks, MASK_SUFFIX),
        (layout.test_images, IMAGE_SUFFIX),
    ):
        if not folder.exists():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if str(path) not in listed:
                what = (
                    "not listed in the metadata"
                    if path.name.endswith(suffix)
                    else (f"unexpected file (expected <tile_id>{suffix})")
                )
                report.problems.append(Problem(str(path), what))
    return report
