"""The competition submission archive, and a checker for it.

Format: an **uncompressed** tar holding, at the archive root, one ``<tile_id>_kelp.tif`` per
test tile listed in the metadata CSV; each a one-band 350 × 350 uint8 GeoTIFF with values
0/1. :func:`write_submission` refuses to write an incomplete or invalid archive and checks the
finished archive with :func:`check_submission` before renaming it into place.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.io import MemoryFile

from kelpseg.bands import TILE_SIZE
from kelpseg.errors import KelpsegError
from kelpseg.evaluate.evaluate import format_ids, prediction_files
from kelpseg.io.atomic import atomic_path
from kelpseg.io.metadata import SATELLITE, load_metadata
from kelpseg.io.tiles import gdal_reason
from kelpseg.layout import MASK_SUFFIX, DataLayout, mask_name

#: Leading bytes of compressed streams that tarfile would open transparently.
_COMPRESSION_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_MEMBER_RE = re.compile(rf"^([^/\\]+){re.escape(MASK_SUFFIX)}$")
#: How many problems the raising helper prints.
MAX_LISTED_PROBLEMS = 10


def submission_tile_ids(metadata: str | Path | DataLayout) -> list[str]:
    """Sorted ids of the test tiles (satellite rows not in train) of a metadata CSV or layout."""
    path = metadata.metadata_csv if isinstance(metadata, DataLayout) else Path(metadata)
    meta = load_metadata(path)
    ids = sorted(meta.loc[(meta["type"] == SATELLITE) & ~meta["in_train"], "tile_id"].astype(str))
    if not ids:
        raise KelpsegError(f"{path}: no test tiles listed")
    return ids


def _raster_problems(name: str, data: bytes) -> tuple[list[str], np.ndarray | None]:
    """Problems of one GeoTIFF given as bytes, and its pixels when they are readable."""
    try:
        with MemoryFile(data) as mem, mem.open() as src:
            count, height, width, dtype = src.count, src.height, src.width, src.dtypes[0]
            pixels = src.read(1)
    except (RasterioIOError, ValueError) as exc:
        return [f"{name}: not a readable GeoTIFF ({gdal_reason(exc)})"], None
    problems = []
    if count != 1:
        problems.append(f"{name}: expected 1 band, got {count}")
    if (height, width) != (TILE_SIZE, TILE_SIZE):
        problems.append(f"{name}: expected {TILE_SIZE}x{TILE_SIZE} pixels, got {height}x{width}")
    if dtype != "uint8":
        problems.append(f"{name}: expected dtype uint8, got {dtype}")
    values = np.unique(pixels)
    if not np.isin(values, (0, 1)).all():
        shown = [float(v) if np.issubdtype(values.dtype, np.floating) else int(v) for v in values[:5]]
        problems.append(f"{name}: expected values 0/1, got {shown}")
    return problems, pixels


def _compression(path: Path) -> str | None:
    with path.open("rb") as fh:
        head = fh.read(8)
    return next((kind for magic, kind in _COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def check_submission(tar_path: str | Path, metadata: str | Path | DataLayout) -> list[str]:
    """Every problem of a submission archive, as one-line messages (empty list: valid).

    Checks: uncompressed tar; only regular files; names ``<tile_id>_kelp.tif`` at the root;
    no duplicates; exactly the test tiles of the metadata (missing and extra ids listed); per
    file one band, 350 × 350, uint8, values in {0, 1}.
    """
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        return [f"{tar_path}: file not found"]
    kind = _compression(tar_path)
    if kind is not None:
        return [f"{tar_path}: archive is {kind}-compressed; the competition expects an uncompressed tar"]
    expected = set(submission_tile_ids(metadata))
    problems: list[str] = []
    seen: set[str] = set()
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                name = member.name
                if not member.isfile():
                    problems.append(
                        f"{name}: not a regular file (only {MASK_SUFFIX} files belong in the archive)"
                    )
                    continue
                match = _MEMBER_RE.match(name)
                if match is None:
                    root = name.replace("\\", "/").rsplit("/", 1)[-1]
                    if root != name:
                        problems.append(
                            f"{name}: stored in a folder; each mask must sit at the archive root "
                            f"as '<tile_id>{MASK_SUFFIX}'"
                        )
                    else:
                        problems.append(f"{name}: expected a name '<tile_id>{MASK_SUFFIX}'")
                    continue
                tid = match.group(1)
                if tid in seen:
                    problems.append(f"{name}: appears more than once")
                    continue
                seen.add(tid)
                fh = tar.extractfile(member)
                assert fh is not None
                problems.extend(_raster_problems(name, fh.read())[0])
    except tarfile.TarError as exc:
        return [f"{tar_path}: not a readable tar archive ({exc})"]
    missing, extra = expected - seen, seen - expected
    if missing:
        problems.append(f"{len(missing)} test tile(s) missing: {format_ids(missing)}")
    if extra:
        problems.append(f"{len(extra)} tile(s) not in the test set: {format_ids(extra)}")
    return problems


def raise_for_problems(problems: list[str], what: str) -> None:
    """KelpsegError with the first problems on one line, when there are any."""
    if not problems:
        return
    shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = f"; … ({len(problems)} problems in all)" if len(problems) > MAX_LISTED_PROBLEMS else ""
    raise KelpsegError(f"{what}: {shown}{more}")


def require_valid_submission(tar_path: str | Path, metadata: str | Path | DataLayout) -> None:
    """Raise KelpsegError listing the problems of a submission archive, if any."""
    raise_for_problems(check_submission(tar_path, metadata), f"{tar_path}: invalid submission")


def _member_bytes(path: Path) -> tuple[bytes, list[str]]:
    """The file's bytes ready for the archive (integer 0/1 masks converted to uint8)."""
    data = path.read_bytes()
    problems, pixels = _raster_problems(path.name, data)
    if pixels is None:
        return data, [f"{path}: not a readable GeoTIFF"]
    if np.issubdtype(pixels.dtype, np.floating):
        return data, [f"{path}: holds probabilities ({pixels.dtype}); threshold them into 0/1 masks first"]
    fatal = [p for p in problems if "expected dtype" not in p]
    if fatal or not problems:
        return data, [p.replace(path.name, str(path), 1) for p in fatal]
    # an integer 0/1 mask in another dtype (e.g. the reference's int8): rewrite as uint8
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(dtype="uint8", nodata=None)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(pixels.astype(np.uint8)[None])
        return mem.read(), []


def write_submission(
    preds_dir: str | Path,
    metadata: str | Path | DataLayout,
    out_tar: str | Path,
    tile_ids: Iterable[str] | None = None,
) -> Path:
    """Write ``out_tar``: every test tile's ``<tile_id>_kelp.tif`` from ``preds_dir``.

    ``tile_ids`` defaults to the test tiles of the metadata CSV (or of ``layout.metadata_csv``).
    Extra files in ``preds_dir`` are ignored. Refuses (KelpsegError, nothing written) when a
    tile is missing or a file is not a one-band 350 × 350 0/1 integer mask; probabilities must
    be thresholded first. Integer masks of another dtype are converted to uint8.
    """
    preds_dir, out_tar = Path(preds_dir), Path(out_tar)
    ids = sorted(tile_ids) if tile_ids is not None else submission_tile_ids(metadata)
    if not ids:
        raise KelpsegError("no test tiles to put in the submission")
    files = prediction_files(preds_dir)
    missing = [t for t in ids if t not in files]
    if missing:
        raise KelpsegError(
            f"{preds_dir}: {len(missing)} of {len(ids)} test tile prediction(s) missing: "
            f"{format_ids(missing)}"
        )
    problems: list[str] = []
    with atomic_path(out_tar) as tmp:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for tid in ids:
                data, file_problems = _member_bytes(files[tid])
                problems.extend(file_problems)
                if file_problems:
                    continue
                info = tarfile.TarInfo(mask_name(tid))
                info.size, info.mode = len(data), 0o644
                info.mtime = int(files[tid].stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
        raise_for_problems(problems, f"{preds_dir}: cannot write a submission")
        if tile_ids is None:
            raise_for_problems(check_submission(tmp, metadata), f"{out_tar}: archive failed its check")
    return out_tar
