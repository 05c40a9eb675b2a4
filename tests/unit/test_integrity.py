from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from builders import random_tile, write_dataset
from kelpseg.io.integrity import check_data
from kelpseg.io.tiles import write_geotiff


@pytest.fixture
def layout(tmp_path: Path):
    return write_dataset(tmp_path, ["AA000001", "AA000002", "AA000003"], ["BB000001", "BB000002"])


def _messages(report) -> list[str]:
    return [str(p) for p in report.problems]


def test_clean_dataset_passes(layout) -> None:
    report = check_data(layout, checksums=True, workers=1, progress=False)
    assert report.ok, _messages(report)
    assert (report.n_train, report.n_test, report.n_files_checked) == (3, 2, 8)


def test_every_problem_is_listed(layout) -> None:
    # 1. missing mask file, 2. wrong band count, 3. wrong size, 4. truncated tile,
    # 5. md5 mismatch (rewritten content), 6. unlisted extra file, 7. missing test image.
    layout.mask_path("AA000001").unlink()
    write_geotiff(layout.image_path("AA000002", "train"), random_tile()[:5], "int16")
    write_geotiff(layout.image_path("BB000001", "test"), random_tile()[:, :200, :200], "int16")
    trunc = layout.image_path("AA000003", "train")
    trunc.write_bytes(trunc.read_bytes()[:5000])
    mask = np.zeros((350, 350), np.uint8)
    mask[0, 0] = 1
    write_geotiff(layout.mask_path("AA000002"), mask, "uint8")
    write_geotiff(layout.train_images / "ZZ999999_satellite.tif", random_tile(), "int16")
    layout.image_path("BB000002", "test").unlink()

    report = check_data(layout, checksums=True, workers=2, progress=False)
    msgs = "\n".join(_messages(report))
    assert "AA000001_kelp.tif: listed in the metadata as a kelp file but not found" in msgs
    assert "AA000002_satellite.tif: expected a satellite tile of 7 band(s) x 350 x 350, got 5" in msgs
    assert (
        "BB000001_satellite.tif: expected a satellite tile of 7 band(s) x 350 x 350, got 7 x 200 x 200"
        in msgs
    )
    assert "AA000003_satellite.tif: " in msgs and ("truncated" in msgs or "not a readable GeoTIFF" in msgs)
    assert "AA000002_kelp.tif: md5 " in msgs and "metadata says" in msgs
    assert "ZZ999999_satellite.tif: not listed in the metadata" in msgs
    assert "BB000002_satellite.tif: listed in the metadata as a satellite file but not found" in msgs
    assert not report.ok


def test_train_image_without_mask_row(layout) -> None:
    meta = pd.read_csv(layout.metadata_csv)
    meta = meta[~((meta["tile_id"] == "AA000002") & (meta["type"] == "kelp"))]
    meta.to_csv(layout.metadata_csv, index=False)
    report = check_data(layout, workers=1, progress=False)
    msgs = _messages(report)
    assert any("AA000002_satellite.tif: train image has no mask row" in m for m in msgs)
    assert any("AA000002_kelp.tif: not listed in the metadata" in m for m in msgs)


def test_size_mismatch_only_with_checksums(layout) -> None:
    meta = pd.read_csv(layout.metadata_csv)
    meta.loc[0, "filesize_bytes"] = 1
    meta.to_csv(layout.metadata_csv, index=False)
    assert check_data(layout, workers=1, progress=False).ok
    report = check_data(layout, checksums=True, workers=1, progress=False)
    assert any("metadata says 1" in m for m in _messages(report))


def test_unreadable_metadata_is_a_problem_not_a_crash(layout) -> None:
    layout.metadata_csv.write_text("nonsense\n1\n")
    report = check_data(layout, workers=1, progress=False)
    assert len(report.problems) == 1
    assert "metadata_fTq0l2T.csv" in str(report.problems[0])
    assert "expected columns" in str(report.problems[0])
