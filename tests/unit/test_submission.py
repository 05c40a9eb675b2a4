"""Submission archive: writing, and rejecting every malformed case."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rasterio.io import MemoryFile

from kelpseg.errors import KelpsegError
from kelpseg.infer.submission import (
    check_submission,
    require_valid_submission,
    submission_tile_ids,
    write_submission,
)
from kelpseg.io.metadata import write_metadata
from kelpseg.io.tiles import write_geotiff, write_mask, write_probability
from kelpseg.layout import DataLayout

S = 350
TEST_IDS = ["TA001", "TB002", "TC003"]


@pytest.fixture
def metadata(tmp_path: Path) -> Path:
    rows = [("TR100", "satellite", True), ("TR100", "kelp", True)] + [
        (t, "satellite", False) for t in TEST_IDS
    ]
    meta = pd.DataFrame(
        [
            {
                "tile_id": tid,
                "filename": f"{tid}_{kind}.tif",
                "md5_hash": "0" * 32,
                "filesize_bytes": 1,
                "type": kind,
                "in_train": in_train,
            }
            for tid, kind, in_train in rows
        ]
    )
    return write_metadata(tmp_path / "raw" / "metadata_fTq0l2T.csv", meta)


def _mask(tid_index: int = 0) -> np.ndarray:
    m = np.zeros((S, S), np.uint8)
    m[tid_index : tid_index + 5, :7] = 1
    return m


def _preds(folder: Path, ids: list[str] = TEST_IDS) -> Path:
    for i, tid in enumerate(ids):
        write_mask(folder / f"{tid}_kelp.tif", _mask(i))
    return folder


def _tif_bytes(array: np.ndarray, dtype: str) -> bytes:
    data = array[None] if array.ndim == 2 else array
    profile = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": dtype,
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data.astype(dtype))
        return mem.read()


def _tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _good_members() -> dict[str, bytes]:
    return {f"{t}_kelp.tif": _tif_bytes(_mask(i), "uint8") for i, t in enumerate(TEST_IDS)}


def test_metadata_test_ids(metadata: Path, tmp_path: Path) -> None:
    assert submission_tile_ids(metadata) == TEST_IDS
    assert submission_tile_ids(DataLayout(tmp_path)) == TEST_IDS


def test_write_and_check_round_trip(metadata: Path, tmp_path: Path) -> None:
    preds = _preds(tmp_path / "preds")
    write_mask(preds / "TR100_kelp.tif", _mask())  # a non-test prediction is left out
    out = write_submission(preds, metadata, tmp_path / "sub" / "submission.tar")
    assert check_submission(out, metadata) == []
    require_valid_submission(out, metadata)
    with tarfile.open(out, "r:") as tar:  # plain, uncompressed tar
        names = tar.getnames()
        assert names == [f"{t}_kelp.tif" for t in TEST_IDS]
        data = tar.extractfile("TB002_kelp.tif").read()  # type: ignore[union-attr]
    assert out.read_bytes()[:2] != b"\x1f\x8b"
    with MemoryFile(data) as mem, mem.open() as src:
        assert (src.count, src.height, src.width, src.dtypes[0]) == (1, S, S, "uint8")
        assert np.array_equal(src.read(1), _mask(1))


def test_int8_predictions_are_converted_to_uint8(metadata: Path, tmp_path: Path) -> None:
    preds = tmp_path / "preds"
    for i, tid in enumerate(TEST_IDS):
        write_geotiff(preds / f"{tid}_kelp.tif", _mask(i).astype(np.int8), "int8")
    out = write_submission(preds, metadata, tmp_path / "submission.tar")
    assert check_submission(out, metadata) == []
    with tarfile.open(out) as tar:
        data = tar.extractfile("TC003_kelp.tif").read()  # type: ignore[union-attr]
    with MemoryFile(data) as mem, mem.open() as src:
        assert src.dtypes[0] == "uint8" and np.array_equal(src.read(1), _mask(2))


def test_write_refuses_incomplete_or_invalid(metadata: Path, tmp_path: Path) -> None:
    target = tmp_path / "submission.tar"
    preds = _preds(tmp_path / "p1", TEST_IDS[:2])
    with pytest.raises(KelpsegError, match=r"1 of 3 test tile prediction\(s\) missing: TC003"):
        write_submission(preds, metadata, target)
    assert not target.exists()
    preds = _preds(tmp_path / "p2")
    write_probability(preds / "TB002_kelp.tif", np.full((S, S), 0.3, np.float32))
    with pytest.raises(KelpsegError, match=r"TB002_kelp\.tif: holds probabilities"):
        write_submission(preds, metadata, target)
    preds = _preds(tmp_path / "p3")
    write_geotiff(preds / "TA001_kelp.tif", np.full((S, S), 2, np.uint8), "uint8")
    with pytest.raises(KelpsegError, match=r"TA001_kelp.tif: expected values 0/1, got \[2\]"):
        write_submission(preds, metadata, target)
    assert not target.exists()
    assert not list(tmp_path.glob(".submission*"))
    # an existing archive is left untouched by a refused write
    good = write_submission(_preds(tmp_path / "p4"), metadata, target)
    before = good.read_bytes()
    with pytest.raises(KelpsegError):
        write_submission(tmp_path / "p1", metadata, target)
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"1 test tile\(s\) missing: TC003"),
        ("extra", r"1 tile\(s\) not in the test set: ZZ999"),
        ("shape", r"TA001_kelp.tif: expected 350x350 pixels, got 300x350"),
        ("bands", r"TA001_kelp.tif: expected 1 band, got 2"),
        ("float", r"TA001_kelp.tif: expected dtype uint8, got float32"),
        ("int8", r"TA001_kelp.tif: expected dtype uint8, got int8"),
        ("value2", r"TA001_kelp.tif: expected values 0/1, got \[0, 2\]"),
        ("folder", r"preds/TA001_kelp.tif: .*stored in a folder; each mask must sit at the archive root as"),
        ("name", r"TA001.tif: expected a name '<tile_id>_kelp.tif'"),
        ("duplicate", r"TA001_kelp.tif: appears more than once"),
        ("directory", r"preds: not a regular file"),
        ("corrupt", r"TA001_kelp.tif: not a readable GeoTIFF"),
    ],
)
def test_check_rejects_malformed(metadata: Path, tmp_path: Path, case: str, message: str) -> None:
    members = _good_members()
    path = tmp_path / "bad.tar"
    first = "TA001_kelp.tif"
    if case == "missing":
        del members["TC003_kelp.tif"]
    elif case == "extra":
        members["ZZ999_kelp.tif"] = members[first]
    elif case == "shape":
        members[first] = _tif_bytes(np.zeros((300, S)), "uint8")
    elif case == "bands":
        members[first] = _tif_bytes(np.zeros((2, S, S)), "uint8")
    elif case == "float":
        members[first] = _tif_bytes(np.zeros((S, S)), "float32")
    elif case == "int8":
        members[first] = _tif_bytes(np.zeros((S, S)), "int8")
    elif case == "value2":
        bad = np.zeros((S, S))
        bad[0, 0] = 2
        members[first] = _tif_bytes(bad, "uint8")
    elif case == "folder":
        members[f"preds/{first}"] = members.pop(first)
    elif case == "name":
        members["TA001.tif"] = members.pop(first)
    elif case == "corrupt":
        members[first] = b"not a tiff at all"
    if case == "duplicate":
        _tar(path, members)
        with tarfile.open(path, "a") as tar:
            info = tarfile.TarInfo(first)
            info.size = len(members[first])
            tar.addfile(info, io.BytesIO(members[first]))
    elif case == "directory":
        _tar(path, members)
        with tarfile.open(path, "a") as tar:
            info = tarfile.TarInfo("preds")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    else:
        _tar(path, members)
    problems = check_submission(path, metadata)
    assert any(re.search(message, p) for p in problems), problems
    with pytest.raises(KelpsegError, match="invalid submission"):
        require_valid_submission(path, metadata)


@pytest.mark.parametrize(("mode", "kind"), [("w:gz", "gzip"), ("w:bz2", "bzip2"), ("w:xz", "xz")])
def test_check_rejects_compressed_archives(metadata: Path, tmp_path: Path, mode: str, kind: str) -> None:
    path = _tar(tmp_path / "sub.tar", _good_members(), mode)
    assert check_submission(path, metadata) == [
        f"{path}: archive is {kind}-compressed; the competition expects an uncompressed tar"
    ]


def test_check_missing_and_not_a_tar(metadata: Path, tmp_path: Path) -> None:
    assert check_submission(tmp_path / "nope.tar", metadata) == [f"{tmp_path / 'nope.tar'}: file not found"]
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"x" * 2000)
    assert "not a readable tar archive" in check_submission(junk, metadata)[0]


def test_many_problems_are_summarised(metadata: Path, tmp_path: Path) -> None:
    members = {f"{t}_kelp.tif": _tif_bytes(np.full((S, S), 3), "uint8") for t in TEST_IDS}
    members.update({f"X{i:02d}_kelp.tif": _tif_bytes(np.full((S, S), 3), "uint8") for i in range(12)})
    path = _tar(tmp_path / "sub.tar", members)
    with pytest.raises(KelpsegError, match=r"\(16 problems in all\)$"):
        require_valid_submission(path, metadata)
