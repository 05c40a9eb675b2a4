"""The competition metadata CSV (``metadata_fTq0l2T.csv``).

Two forms are accepted:

* the original six columns ``tile_id, filename, md5_hash, filesize_bytes, type, in_train``
  (a train tile has a ``satellite`` and a ``kelp`` row, a test tile one ``satellite`` row);
* a seven-column public copy that adds ``dataset`` (``train_img | label_img | test_img``) and
  marks mask rows ``in_train=FALSE``. There the split of a row comes from ``dataset``.

The loader normalises both to the six original columns with a boolean ``in_train`` that is
true for every row of a training tile.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from kelpseg.errors import MetadataError
from kelpseg.layout import IMAGE_SUFFIX, MASK_SUFFIX

REQUIRED_COLUMNS = ("tile_id", "filename", "md5_hash", "filesize_bytes", "type", "in_train")
SATELLITE = "satellite"
KELP = "kelp"
_TRUE = {"true", "1", "yes", "t"}
_FALSE = {"false", "0", "no", "f"}
_DATASET_SPLIT = {"train_img": True, "label_img": True, "test_img": False}
#: The competition's tile ids are two capital letters and six digits (``AA498489``).
COMPETITION_TILE_ID = re.compile(r"^[A-Z]{2}[0-9]{6}$")
#: Any tile id kelpseg accepts: a plain file-name component without ``_`` (the tile id of a file
#: is its name cut at the first ``_``), so that no path built from it leaves its folder.
_TILE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,127}$")


def check_tile_id(tile_id: object, source: str | Path = "tile id") -> str:
    """Return ``tile_id`` if it is safe to build file names from, else raise :class:`MetadataError`.

    This is the one sanitiser for ids read from CSVs and tables: output paths are built as
    ``<folder>/<tile_id><suffix>``, so an id such as ``../../x`` or ``/etc/x`` must never pass.
    """
    text = str(tile_id)
    if not _TILE_ID.match(text) or ".." in text:
        raise MetadataError(
            f"{source}: tile id {text!r} is not a plain name (expected e.g. AA498489: letters, digits, "
            "'-' or '.', no '_', '/' or '..')"
        )
    return text


def _check_ids_and_names(out: pd.DataFrame, path: Path) -> None:
    bad = [t for t in out["tile_id"].astype(str).unique() if not _TILE_ID.match(t) or ".." in t]
    if bad:
        check_tile_id(bad[0], path)
    suffix = out["type"].map({SATELLITE: IMAGE_SUFFIX, KELP: MASK_SUFFIX})
    expected = out["tile_id"].astype(str) + suffix
    wrong = out["filename"].astype(str) != expected
    if wrong.any():
        row = out[wrong].iloc[0]
        raise MetadataError(
            f"{path}: row of tile {row['tile_id']} ({row['type']}) names file {row['filename']!r}, "
            f"expected {expected[wrong].iloc[0]!r} ({int(wrong.sum())} such row(s))"
        )


def _to_bool(series: pd.Series, path: Path) -> pd.Series:
    if series.dtype == bool:
        return series
    text = series.astype(str).str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        raise MetadataError(
            f"{path}: column 'in_train' must be TRUE/FALSE, got {sorted(set(series[bad].astype(str)))[:5]}"
        )
    return text.isin(_TRUE)


def load_metadata(path: str | Path) -> pd.DataFrame:
    """Load and validate the metadata CSV; return the six original columns, one row per file."""
    from kelpseg.io.atomic import require_complete

    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        if folder.is_file():
            raise MetadataError(f"{folder}: is a file, expected a directory (the data directory holds raw/)")
    require_complete(path.parent, "dataset")  # first: an interrupted synth writes the CSV last
    if not path.exists():
        raise MetadataError(f"{path}: metadata CSV not found")
    try:
        df = pd.read_csv(path, dtype={"tile_id": str, "filename": str, "md5_hash": str, "type": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{path}: unreadable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise MetadataError(
            f"{path}: expected columns {list(REQUIRED_COLUMNS)} (optionally 'dataset'), missing {missing}"
        )
    if df.empty:
        raise MetadataError(f"{path}: metadata CSV has no rows")
    if "dataset" in df.columns:
        unknown = sorted(set(df["dataset"].astype(str)) - set(_DATASET_SPLIT))
        if unknown:
            raise MetadataError(
                f"{path}: unknown 'dataset' values {unknown}; expected {list(_DATASET_SPLIT)}"
            )
        in_train = df["dataset"].map(_DATASET_SPLIT).astype(bool)
    else:
        in_train = _to_bool(df["in_train"], path)
    out = df.loc[:, list(REQUIRED_COLUMNS)].copy()
    out["in_train"] = in_train.to_numpy()
    out["type"] = out["type"].str.strip().str.lower()
    bad_type = ~out["type"].isin((SATELLITE, KELP))
    if bad_type.any():
        raise MetadataError(
            f"{path}: column 'type' must be 'satellite' or 'kelp', "
            f"got {sorted(set(out['type'][bad_type]))[:5]}"
        )
    empty = out[["tile_id", "filename"]].isna().any(axis=1)
    if empty.any():
        raise MetadataError(f"{path}: empty tile_id or filename in {int(empty.sum())} row(s)")
    _check_ids_and_names(out, path)
    dup = out.duplicated(["tile_id", "type"])
    if dup.any():
        raise MetadataError(f"{path}: duplicate rows for tile(s) {out['tile_id'][dup].head(5).tolist()}")
    out["filesize_bytes"] = pd.to_numeric(out["filesize_bytes"], errors="coerce")
    return out.reset_index(drop=True)


def write_metadata(path: str | Path, df: pd.DataFrame) -> Path:
    """Write the six-column form (TRUE/FALSE booleans, as the competition file), atomically."""
    from kelpseg.io.atomic import atomic_path

    out = df.loc[:, list(REQUIRED_COLUMNS)].copy()
    out["in_train"] = out["in_train"].map({True: "TRUE", False: "FALSE"})
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    return Path(path)
