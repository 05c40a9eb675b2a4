"""The verifying atomic writer without special file systems: full disks and truncated writes are
simulated by patching, so these run for every user (the tmpfs cases in
``tests/integration/test_faults.py`` need root)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import rasterio

from kelpseg.errors import WriteError, failure_message
from kelpseg.io import atomic
from kelpseg.io.atomic import atomic_path, write_text
from kelpseg.io.tiles import write_mask


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_disk_full_while_writing_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    write_text(target, "old")
    with pytest.raises(OSError) as info, atomic_path(target) as tmp:
        tmp.write_text("new, half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == ["notes.txt"]
    message, code = failure_message(info.value)
    assert code == 1 and str(target) in message and "\n" not in message


def test_empty_write_is_rejected_and_not_renamed(tmp_path: Path) -> None:
    target = tmp_path / "empty.txt"
    expected = r"empty\.txt: the write did not complete \(0 bytes written\)"
    with pytest.raises(WriteError, match=expected), atomic_path(target):
        pass  # the writer produced nothing (e.g. died on a full disk before its first block)
    assert _leftovers(tmp_path) == []


def test_truncated_geotiff_fails_verification_and_leaves_no_final_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "AA000001_kelp.tif"
    real_fsync = atomic._fsync

    def truncate_then_fsync(path: Path) -> None:  # as if GDAL stopped writing half way
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        real_fsync(path)

    monkeypatch.setattr(atomic, "_fsync", truncate_then_fsync)
    with pytest.raises(WriteError, match=r"AA000001_kelp\.tif: the write did not complete"):
        write_mask(target, np.ones((350, 350), dtype=np.uint8))
    assert _leftovers(tmp_path) == []
    monkeypatch.setattr(atomic, "_fsync", real_fsync)
    write_mask(target, np.ones((350, 350), dtype=np.uint8))  # the re-run succeeds
    with rasterio.open(target) as src:
        assert int(src.read(1).sum()) == 350 * 350
