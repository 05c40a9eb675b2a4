"""The fault matrix: the command line under bad inputs, full and read-only disks, Ctrl-C and SIGKILL.

Every case runs ``python -m kelpseg.cli`` in a subprocess and checks what a user sees: the exit
code, one message line naming the file, no traceback, nothing unreadable under a final name, no
process left behind, and a re-run that succeeds. Full and read-only file systems are small tmpfs
mounts (root only; skipped elsewhere — ``tests/unit/test_atomic.py`` covers the same paths by
patching). The table in ``docs/reliability.md`` maps every case to its test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from kelpseg.io.metadata import load_metadata, write_metadata
from kelpseg.layout import DataLayout

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[2] / "src"
#: A user error (bad input, OS failure) today; the exit-code convention makes it 1.
USER_ERROR = (1, 2)


# ---- helpers ------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["MLFLOW_TRACKING_URI"] = ""
    env.pop("KELPSEG_RUN_DIR", None)
    return env


def cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kelpseg.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def start(*args: object) -> subprocess.Popen[str]:
    """The command in its own process group (as a shell job), stderr captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "kelpseg.cli", *map(str, args), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )


def assert_one_line_error(
    out: subprocess.CompletedProcess[str] | tuple[int, str], *names: str, code: tuple[int, ...] = USER_ERROR
) -> str:
    rc, stderr = (out.returncode, out.stderr) if isinstance(out, subprocess.CompletedProcess) else out
    text = stderr + (out.stdout if isinstance(out, subprocess.CompletedProcess) else "")
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc in code, (rc, stderr[-2000:])
    assert len(lines) == 1, stderr[-2000:]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def kill_group(pgid: int) -> None:
    for pid in group_pids(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for_processes(proc: subprocess.Popen[str], n: int, timeout: float = 60) -> None:
    """Until the command's group holds ``n`` processes (main, resource tracker, fork server, workers)."""
    deadline = time.monotonic() + timeout
    while len(group_pids(proc.pid)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"finished before {n} processes ran: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {n} processes after {timeout} s")
        time.sleep(0.05)


def alive_after(pgid: int, seconds: float = 5) -> list[int]:
    """The processes of group ``pgid`` still alive ``seconds`` from now ([] as soon as none is)."""
    deadline = time.monotonic() + seconds
    while (alive := group_pids(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def sigkill_leaves_nothing(proc: subprocess.Popen[str]) -> list[int]:
    """SIGKILL the main process; the processes of its group still alive after up to 5 s (killed after)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    alive = alive_after(proc.pid)
    kill_group(proc.pid)
    return alive


def interrupt(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    """Ctrl-C as a terminal sends it (SIGINT to the whole group); exit code and stderr."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc.pid)
    return proc.returncode, err


def unreadable_tifs(folder: Path) -> list[Path]:
    bad = []
    for path in sorted(folder.glob("*.tif")):
        try:
            with rasterio.open(path) as src:
                src.read()
        except Exception:
            bad.append(path)
    return bad


def hidden_temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def can_mount() -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/kelpseg-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(probe)], capture_output=True)
    if ok.returncode == 0:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok.returncode == 0


needs_mount = pytest.mark.skipif(not can_mount(), reason="needs root and tmpfs mounts")


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave_bytes: int) -> None:
    """Fill a file system until about ``leave_bytes`` are free."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as fh, contextlib.suppress(OSError):
        fh.write(b"\0" * max(0, free - leave_bytes))


# ---- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> DataLayout:
    from builders import prepared_synthetic

    return prepared_synthetic(tmp_path_factory.mktemp("faults") / "data", 24, 4, n_folds=3, seed=5)


@pytest.fixture(scope="module")
def trained(prepared: DataLayout, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from builders import tiny_train_config
    from kelpseg.train.run import train

    cfg = tiny_train_config(prepared, tmp_path_factory.mktemp("runs"), steps=2, epochs=1, run_name="r")
    return train(cfg, progress=False)


def copy_data(layout: DataLayout, dest: Path) -> DataLayout:
    shutil.copytree(layout.root, dest, ignore=shutil.ignore_patterns("cache"))
    return DataLayout(dest)


def config_file(layout: DataLayout, runs: Path, path: Path, **overrides: object) -> Path:
    from builders import tiny_train_config

    tiny_train_config(layout, runs, steps=2, **overrides).save(path)
    return path


# ---- 1. full disk: nothing corrupt under a final name ---------------------------------------------
@needs_mount
def test_predict_into_full_disk_leaves_no_corrupt_mask(prepared: DataLayout, trained: Path, tmp_path: Path):
    with tmpfs(tmp_path / "full", "64k") as out:
        fill(out, 3000)
        res = cli("predict", "-r", trained, "-i", prepared.test_images, "-o", out, "--quiet")
        line = assert_one_line_error(res, str(out))
        assert "no space left" in line or "did not complete" in line
        assert unreadable_tifs(out) == []
        assert hidden_temps(out) == []
    again = cli("predict", "-r", trained, "-i", prepared.test_images, "-o", tmp_path / "ok", "--quiet")
    assert again.returncode == 0, again.stderr
    assert len(list((tmp_path / "ok").glob("*_kelp.tif"))) == 4 and unreadable_tifs(tmp_path / "ok") == []


@needs_mount
def test_checkpoint_save_on_full_disk_is_one_line(prepared: DataLayout, tmp_path: Path):
    with tmpfs(tmp_path / "runs", "96k") as runs:
        cfg = config_file(prepared, runs, tmp_path / "c.yaml", epochs=1, run_name="full")
        res = cli("train", "-c", cfg, "--quiet")
        assert_one_line_error(res, str(runs))
        ckpts = list(runs.rglob("*.ckpt"))
        assert ckpts == [] and hidden_temps(runs) == []


@needs_mount
def test_scene_on_full_disk_is_one_line_and_keeps_earlier_outputs(trained: Path, tmp_path: Path):
    from kelpseg.scene.synthetic import write_synthetic_scene

    scenes = [
        write_synthetic_scene(tmp_path / "scenes", 160, 160, seed=2, date=d)
        for d in ("2020-07-15", "2021-07-20")
    ]

    def scene(sc: object, out: Path) -> subprocess.CompletedProcess[str]:
        options = ("--overlap", "0", "--workers", "0", "--quiet")
        return cli("scene", sc.folder, "-r", trained, "--dem", sc.dem, "-o", out, *options)

    with tmpfs(tmp_path / "full", "2m") as root:
        out = root / "maps"
        first = scene(scenes[0], out)
        assert first.returncode == 0, first.stderr
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        fill(root, 20_000)
        res = scene(scenes[1], out)
        line = assert_one_line_error(res, str(out))  # libtiff's own complaints held back
        assert "no space left" in line or "did not complete" in line
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing new, nothing touched
        assert hidden_temps(root) == [] and not any(p.name.startswith(".") for p in out.iterdir())


# ---- 4. read-only and odd output locations -------------------------------------------------------
@needs_mount
def test_predict_into_read_only_dir_fails_before_work(prepared: DataLayout, trained: Path, tmp_path: Path):
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as out:
        started = time.perf_counter()
        res = cli("predict", "-r", trained, "-i", prepared.test_images, "-o", out / "preds", "--quiet")
        line = assert_one_line_error(res, str(out / "preds"))
        assert "read-only" in line
    assert time.perf_counter() - started < 60


@needs_mount
def test_stage_into_read_only_processed_dir(prepared: DataLayout, tmp_path: Path):
    layout = copy_data(prepared, tmp_path / "data")
    shutil.rmtree(layout.eda_dir)
    with tmpfs(layout.eda_dir, "64k", read_only=True):
        res = cli("eda", "-d", layout.root, "--quiet")
        line = assert_one_line_error(res, str(layout.eda_dir))
        assert "read-only" in line
    assert cli("eda", "-d", layout.root, "--quiet").returncode == 0


@needs_mount
def test_train_into_read_only_runs_dir(prepared: DataLayout, tmp_path: Path):
    with tmpfs(tmp_path / "runs", "64k", read_only=True) as runs:
        cfg = config_file(prepared, runs, tmp_path / "c.yaml", epochs=1, run_name="ro")
        line = assert_one_line_error(cli("train", "-c", cfg, "--quiet"), str(runs))
        assert "read-only" in line


def test_data_dir_that_is_a_file(tmp_path: Path):
    afile = tmp_path / "data.txt"
    afile.write_text("not a folder\n")
    for command in ("eda", "aoi-grouping", "band-stats", "split"):
        line = assert_one_line_error(cli(command, "-d", afile), str(afile))
        assert "file" in line or "directory" in line, (command, line)


# ---- 2. path traversal through the metadata CSV ----------------------------------------------------
@pytest.mark.parametrize(
    ("tile_id", "filename"),
    [
        ("../../../../escape/X", None),
        ("/tmp/kelpseg-escape/X", None),
        (None, "../../etc/passwd"),
    ],
)
def test_ids_from_the_csv_never_leave_the_data_dir(prepared: DataLayout, tmp_path: Path, tile_id, filename):
    layout = copy_data(prepared, tmp_path / "work" / "data")
    meta = load_metadata(layout.metadata_csv)
    first = meta.index[meta["type"] == "satellite"][0]
    if tile_id is not None:
        meta.loc[meta["tile_id"] == meta.at[first, "tile_id"], "tile_id"] = tile_id
    if filename is not None:
        meta.at[first, "filename"] = filename
    write_metadata(layout.metadata_csv, meta)
    check = cli("check-data", "-d", layout.root, "--checksums", "--quiet")
    assert check.returncode != 0 and "data OK" not in check.stdout
    assert str(layout.metadata_csv) in check.stdout and "Traceback" not in check.stdout + check.stderr
    plot = cli("plot-samples", "-d", layout.root, "--quiet")
    assert_one_line_error(plot, str(layout.metadata_csv))
    pngs = list((tmp_path / "work").rglob("*.png"))
    outside = [p for p in pngs if layout.root not in p.parents] + list(Path("/tmp/kelpseg-escape").glob("*"))
    assert not layout.plots_dir.exists() or list(layout.plots_dir.iterdir()) == []
    assert outside == []


# ---- 3. SIGKILL: no process left, no half dataset that looks complete ------------------------------
@pytest.mark.parametrize("command", ["band-stats", "eda", "aoi-grouping", "check-data"])
def test_sigkill_of_a_stage_leaves_no_process(prepared: DataLayout, tmp_path: Path, command: str):
    layout = copy_data(prepared, tmp_path / "data")
    proc = start(command, "-d", layout.root, "-w", "2")
    wait_for_processes(proc, 4)  # main, resource tracker, fork server, a worker
    assert sigkill_leaves_nothing(proc) == []


def test_sigkill_of_train_leaves_no_process(prepared: DataLayout, tmp_path: Path):
    cfg = config_file(
        prepared, tmp_path / "runs", tmp_path / "c.yaml", num_workers=2, epochs=50, samples_per_epoch=400
    )
    proc = start("train", "-c", cfg)
    wait_for_processes(proc, 4, timeout=120)
    assert sigkill_leaves_nothing(proc) == []


def test_sigkill_of_synth_leaves_no_writer_and_no_complete_looking_dataset(tmp_path: Path):
    data = tmp_path / "data"
    proc = start("synth", "-d", data, "--n-train", "200", "--n-test", "20", "-w", "2")
    wait_for_processes(proc, 4)
    time.sleep(1.0)
    assert sigkill_leaves_nothing(proc) == []
    n_files = len(list(data.rglob("*.tif")))
    time.sleep(2)
    assert len(list(data.rglob("*.tif"))) == n_files  # nobody is still writing
    check = cli("check-data", "-d", data, "--quiet")
    assert check.returncode != 0 and "incomplete" in check.stdout and "synth" in check.stdout
    assert_one_line_error(cli("aoi-grouping", "-d", data, "--quiet"), "incomplete")
    again = cli("synth", "-d", data, "--n-train", "6", "--n-test", "2", "--quiet")
    assert again.returncode == 0, again.stderr
    assert cli("check-data", "-d", data, "--quiet").returncode == 0


# ---- 7. Ctrl-C: one line, exit 130, nothing left -----------------------------------------------------
@pytest.mark.parametrize(("command", "n_processes"), [("eda", 3), ("band-stats", 3), ("band-stats", 4)])
def test_ctrl_c_of_a_stage(prepared: DataLayout, tmp_path: Path, command: str, n_processes: int):
    """3 processes: the fork server is still importing (the first seconds); 4: workers run."""
    layout = copy_data(prepared, tmp_path / "data")
    proc = start(command, "-d", layout.root, "-w", "2")
    wait_for_processes(proc, n_processes)
    rc, err = interrupt(proc)
    line = assert_one_line_error((rc, err), "interrupted", code=(130,))
    assert "not written" in line
    assert alive_after(proc.pid) == []


def test_ctrl_c_of_train_says_how_to_resume(prepared: DataLayout, tmp_path: Path):
    cfg = config_file(
        prepared, tmp_path / "runs", tmp_path / "c.yaml", epochs=50, samples_per_epoch=400, run_name="int"
    )
    proc = start("train", "-c", cfg)
    deadline = time.monotonic() + 120
    while not (tmp_path / "runs" / "int" / "config.yaml").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(2)
    rc, err = interrupt(proc)
    line = assert_one_line_error((rc, err), "interrupted", "--resume", code=(130,))
    assert str(tmp_path / "runs" / "int") in line


# ---- 5/6. truncated cache, retry of a run that never finished an epoch ------------------------------
def test_truncated_tile_cache_is_rebuilt(prepared: DataLayout, tmp_path: Path):
    layout = copy_data(prepared, tmp_path / "data")
    cfg = config_file(layout, tmp_path / "runs", tmp_path / "c.yaml", epochs=1, use_cache=True, run_name="a")
    assert cli("train", "-c", cfg, "--quiet").returncode == 0
    (images,) = layout.cache_dir.glob("*/images.npy")
    with open(images, "r+b") as fh:
        fh.truncate(images.stat().st_size // 3)
    cfg = config_file(layout, tmp_path / "runs", tmp_path / "c.yaml", epochs=1, use_cache=True, run_name="b")
    res = cli("train", "-c", cfg, "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "runs" / "b" / "summary.json").read_text())["status"] == "finished"


def test_run_that_failed_before_its_first_epoch_can_be_retried(prepared: DataLayout, tmp_path: Path):
    layout = copy_data(prepared, tmp_path / "data")
    cfg = config_file(layout, tmp_path / "runs", tmp_path / "c.yaml", epochs=1, run_name="x")
    bad = next(layout.train_images.glob("*_satellite.tif"))
    saved = bad.read_bytes()
    bad.write_bytes(saved[: len(saved) // 4])  # the first batch fails
    first = cli("train", "-c", cfg, "--quiet", "--set", "samples_per_epoch=48", "--set", "batch_size=24")
    assert first.returncode != 0
    bad.write_bytes(saved)
    res = cli("train", "-c", cfg, "--quiet")  # same run name: starts it again
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "runs" / "x"
    shutil.rmtree(run / "checkpoints")
    (run / "summary.json").unlink()  # as after a SIGKILL before the first epoch
    resumed = cli("train", "--resume", run, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / "checkpoints" / "last.ckpt").is_file()


# ---- 8. temp files of killed writers, stage outputs seen together ---------------------------------
def test_killed_eda_is_refused_downstream_and_temps_are_cleaned(prepared: DataLayout, tmp_path: Path):
    layout = copy_data(prepared, tmp_path / "data")
    stale = layout.eda_dir / ".split_balance.99999999-0badf00d.tmp.png"
    stale.write_bytes(b"")
    (layout.eda_dir / "dataset_stats.parquet").unlink()
    proc = start("eda", "-d", layout.root, "-w", "2")
    while not (layout.eda_dir / ".kelpseg-incomplete.json").exists():
        assert proc.poll() is None
        time.sleep(0.02)
    assert sigkill_leaves_nothing(proc) == []
    line = assert_one_line_error(cli("split", "-d", layout.root, "-k", "3"), str(layout.eda_dir))
    assert "kelpseg eda" in line
    assert cli("eda", "-d", layout.root, "--quiet").returncode == 0
    assert not stale.exists() and hidden_temps(layout.eda_dir) == []
    assert cli("split", "-d", layout.root, "-k", "3").returncode == 0


# ---- 9. messages ---------------------------------------------------------------------------------------
def test_corrupt_geotiff_message_has_no_dangling_gdal_reference(
    prepared: DataLayout, tmp_path: Path, trained: Path
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    src = next(prepared.test_images.glob("*_satellite.tif"))
    (inputs / src.name).write_bytes(src.read_bytes()[:300])
    line = assert_one_line_error(
        cli("predict", "-r", trained, "-i", inputs, "-o", tmp_path / "o", "--quiet"), src.name
    )
    assert "See previous exception" not in line


def test_check_submission_member_in_a_folder(prepared: DataLayout, tmp_path: Path):
    import tarfile

    tid = load_metadata(prepared.metadata_csv).query("not in_train")["tile_id"].iloc[0]
    mask = tmp_path / f"{tid}_kelp.tif"
    from kelpseg.io.tiles import write_mask

    write_mask(mask, np.zeros((350, 350), np.uint8))
    tar = tmp_path / "s.tar"
    with tarfile.open(tar, "w") as fh:
        fh.add(mask, arcname=f"preds/{tid}_kelp.tif")
    res = cli("check-submission", tar, "-d", prepared.root)
    assert res.returncode != 0
    assert f"preds/{tid}_kelp.tif: stored in a folder; each mask must sit at the archive root" in res.stdout


def test_prerequisite_errors_name_the_kelpseg_command(prepared: DataLayout, tmp_path: Path):
    layout = copy_data(prepared, tmp_path / "data")
    layout.aoi_table.unlink()
    line = assert_one_line_error(cli("eda", "-d", layout.root, "--quiet"), str(layout.aoi_table))
    assert "`kelpseg aoi-grouping` (make aoi-grouping)" in line


def test_eda_on_a_missing_data_dir(tmp_path: Path):
    line = assert_one_line_error(cli("eda", "-d", tmp_path / "nope", "--quiet"), str(tmp_path / "nope"))
    assert "data directory not found" in line


def test_truncated_checkpoint(trained: Path, tmp_path: Path, prepared: DataLayout):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    res = cli("predict", "-r", run, "-i", prepared.test_images, "-o", tmp_path / "o", "--quiet")
    assert "truncated or not a checkpoint" in assert_one_line_error(res, str(best))
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    res = cli("train", "--resume", run, "--quiet")
    assert "truncated or not a checkpoint" in assert_one_line_error(res, str(last))
