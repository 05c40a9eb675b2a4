"""glibc heap tuning: takes effect on Linux/glibc, and is a no-op without the C functions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kelpseg import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_takes_effect_in_its_own_process() -> None:
    code = (
        "from kelpseg.memory import keep_freed_memory, release_free_heap\n"
        "release_free_heap()\n"
        "print(keep_freed_memory())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_without_the_c_functions_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_libc_function", lambda name: None)
    assert memory.keep_freed_memory() is False
    memory.release_free_heap()  # no error
