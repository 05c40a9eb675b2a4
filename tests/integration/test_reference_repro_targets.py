"""The ``repro-*`` make targets on a models/ tree laid out like the reference's published one.

The tree is built from the golden runs (``runs/fold=0``, ``runs/fold=1``): Azure ML exports
(``Job_<name>_OutputsAndLogs/`` with ``config.yaml`` and ``model/`` at the root), ten folds per
submission whose names sort in another order than their folds (each copy's ``cv_split`` says its
fold). The expected decision is the reference's averaging rule computed here from its own soft
and hard prediction files: ``sum_k w_k p_k / (sum(w) + w_first) >= t``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import rasterio

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(os.environ.get("KELPSEG_REFERENCE_ARTIFACTS", REPO.parent / "shared" / "reference-artifacts"))
VENV = Path(os.environ.get("KELPSEG_TEST_VENV", Path(os.sys.executable).parent.parent))  # type: ignore[attr-defined]
TILES = ["GT981497", "KN192289"]  # two of the golden test tiles keep the ten-fold targets quick
TOP_2_WEIGHTS = [0.666, 0.5, 0.666, 0.88, 0.637, 0.59, 0.733, 0.63, 1.0, 0.2]
NAMES = ["zesty", "brave", "quiet", "amber", "noble", "lucid", "cosmic", "dapper", "eager", "fancy"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (GOLDEN / "runs").is_dir(), reason=f"reference golden set not found at {GOLDEN}"),
]


def _job(parent: Path, name: str, fold: int, source: int) -> Path:
    """An Azure ML export of golden run ``source`` whose config says it was trained on ``fold``."""
    artifacts = GOLDEN / "runs" / f"fold={source}" / "artifacts"
    job = parent / f"Job_{name}_{fold}x_OutputsAndLogs"
    (job / "model").mkdir(parents=True)
    text = (artifacts / "config.yaml").read_text().replace(f"cv_split: {source}", f"cv_split: {fold}")
    (job / "config.yaml").write_text(text)
    for ckpt_dir in (artifacts / "model" / "checkpoints").iterdir():
        target = job / "model" / "checkpoints" / ckpt_dir.name
        target.mkdir(parents=True)
        for f in ckpt_dir.iterdir():
            (target / f.name).symlink_to(f)
    return job


def _data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    images = root / "raw" / "test" / "images"
    images.mkdir(parents=True)
    for t in TILES:
        (images / f"{t}_satellite.tif").symlink_to(GOLDEN / "raw" / "test" / "images" / f"{t}_satellite.tif")
    lines = (GOLDEN / "raw" / "metadata_fTq0l2T.csv").read_text().splitlines()
    keep = [lines[0], *[line for line in lines[1:] if line.split(",")[0] in TILES]]
    (root / "raw" / "metadata_fTq0l2T.csv").write_text("\n".join(keep) + "\n")
    (root / "processed").symlink_to(GOLDEN / "processed")
    return root


def _make(target: str, data: Path, models: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = ["make", "-C", str(REPO), target, f"VENV={VENV}", "STAMP=", f"DATA_DIR={data}"]
    cmd += [f"MODELS_DIR={models}", "REPRO_FLAGS=", "WORKERS=1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _tar_masks(path: Path) -> dict[str, np.ndarray]:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            fh = tar.extractfile(m)
            assert fh is not None
            with rasterio.open(BytesIO(fh.read())) as src:
                out[m.name] = src.read(1).astype(int)
        return out


def _reference_average(
    kind: str, sources: list[int], weights: list[float], t: float
) -> dict[str, np.ndarray]:
    out = {}
    for tile in TILES:
        total = np.zeros((350, 350), np.float32)
        for s, w in zip(sources, weights, strict=True):
            total += np.float32(w) * _read(
                GOLDEN / "predictions" / kind / f"fold={s}" / f"{tile}_kelp.tif"
            ).astype(np.float32)
        out[f"{tile}_kelp.tif"] = (total / np.float32(sum(weights) + weights[0]) >= t).astype(int)
    return out


def _agreement(ours: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    assert sorted(ours) == sorted(expected)
    return sum(int((ours[k] == expected[k]).sum()) for k in expected) / sum(v.size for v in expected.values())


def test_repro_targets_on_the_published_layout(tmp_path: Path) -> None:
    if shutil.which("make") is None or not (VENV / "bin" / "kelpseg").exists():
        pytest.skip(f"needs make and a kelpseg installed in {VENV}")
    data, models = _data_dir(tmp_path), tmp_path / "models"
    sources = [k % 2 for k in range(10)]  # fold k is a copy of golden run k % 2
    for sub in ("top-submission-1", "top-submission-2"):
        for k in range(10):
            _job(models / sub, NAMES[k], k, sources[k])
    _job(models / "best-single-model", "sincere_tangelo", 0, 0)

    _make("repro-top-2-submission", data, models)
    ours = _tar_masks(data / "submissions" / "avg" / "repro-top-2" / "submission.tar")
    assert _agreement(ours, _reference_average("soft", sources, TOP_2_WEIGHTS, 0.45)) >= 0.9999

    _make("repro-top-1-submission", data, models)
    ours = _tar_masks(data / "submissions" / "avg" / "repro-top-1" / "submission.tar")
    assert _agreement(ours, _reference_average("hard", sources, [1.0] * 10, 0.48)) >= 0.9999

    _make("repro-best-single-model-submission", data, models)
    ours = _tar_masks(data / "submissions" / "single-model" / "repro-best-single-model" / "submission.tar")
    expected = {
        f"{t}_kelp.tif": (_read(GOLDEN / "predictions/soft/fold=0" / f"{t}_kelp.tif") >= 0.45).astype(int)
        for t in TILES
    }
    assert _agreement(ours, expected) >= 0.9999
