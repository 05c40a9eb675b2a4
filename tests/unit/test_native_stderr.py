"""Descriptor-2 output of C code is held back: full-disk lines to the caller, the rest to stderr."""

from __future__ import annotations

import os

import pytest

from kelpseg.io.native_stderr import held_native_stderr


def test_full_disk_lines_are_held_and_others_pass(capfd: pytest.CaptureFixture[str]) -> None:
    held: list[str] = []
    with held_native_stderr(held):
        os.write(2, b"_tiffSeekProc: No space left on device.\nTIFFWriteTile: other trouble\n")
        os.write(2, b"_tiffSeekProc: No space left on device.\n")
    err = capfd.readouterr().err
    assert err == "TIFFWriteTile: other trouble\n"
    assert held == ["_tiffSeekProc: No space left on device."] * 2


def test_stderr_is_restored_after_an_exception(capfd: pytest.CaptureFixture[str]) -> None:
    held: list[str] = []
    with pytest.raises(RuntimeError), held_native_stderr(held):
        os.write(2, b"during\n")
        raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "during\nafter\n"
    assert held == []
