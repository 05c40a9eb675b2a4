from pathlib import Path

import pandas as pd
import pytest

from kelpseg.errors import MetadataError
from kelpseg.io.catalog import load_catalog
from kelpseg.io.metadata import REQUIRED_COLUMNS, load_metadata
from kelpseg.layout import DataLayout, tile_id_from_path

SHARED_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "competition-metadata.csv"

SIX = """tile_id,filename,md5_hash,filesize_bytes,type,in_train
AA000001,AA000001_satellite.tif,abc,10,satellite,TRUE
AA000001,AA000001_kelp.tif,def,5,kelp,TRUE
BB000002,BB000002_satellite.tif,ghi,11,satellite,FALSE
"""

SEVEN = """tile_id,filename,md5_hash,filesize_bytes,type,in_train,dataset
AA000001,AA000001_satellite.tif,abc,10,satellite,TRUE,train_img
AA000001,AA000001_kelp.tif,def,5,kelp,FALSE,label_img
BB000002,BB000002_satellite.tif,ghi,11,satellite,FALSE,test_img
"""


@pytest.mark.parametrize("text", [SIX, SEVEN], ids=["six-columns", "seven-columns"])
def test_both_forms_give_the_same_table(tmp_path: Path, text: str) -> None:
    path = tmp_path / "meta.csv"
    path.write_text(text)
    meta = load_metadata(path)
    assert list(meta.columns) == list(REQUIRED_COLUMNS)
    # The seven-column copy marks mask rows in_train=FALSE; both forms must say train.
    assert meta["in_train"].tolist() == [True, True, False]
    assert meta["type"].tolist() == ["satellite", "kelp", "satellite"]


def test_catalog_paths(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    layout.raw.mkdir(parents=True)
    layout.metadata_csv.write_text(SEVEN)
    cat = load_catalog(layout)
    assert cat["tile_id"].tolist() == ["AA000001", "BB000002"]
    assert cat["split"].tolist() == ["train", "test"]
    assert cat.loc[0, "image_path"] == str(tmp_path / "raw/train/images/AA000001_satellite.tif")
    assert cat.loc[0, "mask_path"] == str(tmp_path / "raw/train/masks/AA000001_kelp.tif")
    assert cat.loc[1, "image_path"] == str(tmp_path / "raw/test/images/BB000002_satellite.tif")
    assert pd.isna(cat.loc[1, "mask_path"])


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="shared competition metadata not present")
def test_real_competition_metadata() -> None:
    meta = load_metadata(SHARED_CSV)
    sat = meta[meta["type"] == "satellite"]
    assert int(sat["in_train"].sum()) == 5635
    assert int((~sat["in_train"]).sum()) == 1426
    assert int((meta["type"] == "kelp").sum()) == 5635
    assert meta.loc[meta["type"] == "kelp", "in_train"].all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tile_id,filename\nA,b\n", r"meta\.csv: expected columns .* missing \['md5_hash'"),
        ("", r"meta\.csv: unreadable CSV"),
        (
            SIX.replace("TRUE", "maybe", 1),
            r"meta\.csv: column 'in_train' must be TRUE/FALSE, got \['maybe'\]",
        ),
        (SIX.replace(",kelp,", ",label,"), r"meta\.csv: column 'type' must be 'satellite' or 'kelp'"),
        (SIX + SIX.splitlines()[1] + "\n", r"meta\.csv: duplicate rows for tile\(s\) \['AA000001'\]"),
        (SEVEN.replace("test_img", "other"), r"meta\.csv: unknown 'dataset' values \['other'\]"),
        (SIX.splitlines()[0] + "\n", r"meta\.csv: metadata CSV has no rows"),
    ],
)
def test_bad_metadata_messages(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "meta.csv"
    path.write_text(text)
    with pytest.raises(MetadataError, match=message):
        load_metadata(path)


def test_missing_metadata(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"metadata CSV not found"):
        load_metadata(tmp_path / "missing.csv")


def test_binary_garbage_csv(tmp_path: Path) -> None:
    path = tmp_path / "meta.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    with pytest.raises(MetadataError, match=r"meta\.csv: (unreadable CSV|expected columns)"):
        load_metadata(path)


def test_tile_id_from_path() -> None:
    assert tile_id_from_path("/x/AF233037_satellite.tif") == "AF233037"
    assert tile_id_from_path("OK551533_kelp.tif") == "OK551533"


def test_write_metadata_roundtrip(tmp_path: Path) -> None:
    from kelpseg.io.metadata import write_metadata

    src = tmp_path / "a.csv"
    src.write_text(SEVEN)
    meta = load_metadata(src)
    write_metadata(tmp_path / "b.csv", meta)
    raw = pd.read_csv(tmp_path / "b.csv")
    assert list(raw.columns) == list(REQUIRED_COLUMNS)
    assert raw["in_train"].tolist() == [True, True, False]
