"""kelpseg on the reference solution's own artefacts (the golden set made by its unchanged scripts).

The golden set lives at ``<repo>/../shared/reference-artifacts`` (override with
``KELPSEG_REFERENCE_ARTIFACTS``); see its README. Predictions must match the reference's files:
soft probabilities within 1e-4 (fp32), hard masks and the two-fold average on >= 99.99 % of
pixels, the submission archive member for member.
"""

from __future__ import annotations

import os
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import rasterio

from kelpseg.infer.ensemble import reference_equivalent_threshold
from kelpseg.infer.predict import InferenceOptions, predict_folder
from kelpseg.infer.workflows import cv_predict
from kelpseg.layout import DataLayout

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(os.environ.get("KELPSEG_REFERENCE_ARTIFACTS", REPO.parent / "shared" / "reference-artifacts"))

pytestmark = pytest.mark.skipif(
    not (GOLDEN / "runs").is_dir(),
    reason=f"reference golden set not found at {GOLDEN} (set KELPSEG_REFERENCE_ARTIFACTS)",
)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _options(**kw: object) -> InferenceOptions:
    return InferenceOptions(num_workers=0, progress=False, data_dir=GOLDEN, **kw)  # type: ignore[arg-type]


def data_dir_with_golden(tmp_path: Path) -> DataLayout:
    """A data directory whose raw/ and processed/ are the golden set's (outputs go to tmp)."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "raw").symlink_to(GOLDEN / "raw")
    (root / "processed").symlink_to(GOLDEN / "processed")
    return DataLayout(root)


@pytest.mark.parametrize("fold", [0, 1])
def test_golden_predictions_match_the_reference(tmp_path: Path, fold: int) -> None:
    run = GOLDEN / "runs" / f"fold={fold}"
    images = GOLDEN / "raw" / "test" / "images"
    soft = predict_folder(run, images, tmp_path / "soft", soft=True, options=_options())
    hard = predict_folder(run, images, tmp_path / "hard", threshold=0.48, options=_options())
    expected = sorted((GOLDEN / "predictions" / "soft" / f"fold={fold}").glob("*_kelp.tif"))
    assert sorted(p.name for p in soft.paths) == [p.name for p in expected]
    worst, equal, total = 0.0, 0, 0
    for ref_soft in expected:
        ours = _read(tmp_path / "soft" / ref_soft.name)
        assert ours.dtype == np.float32 and ours.shape == (350, 350)
        worst = max(worst, float(np.abs(ours.astype(np.float64) - _read(ref_soft)).max()))
        ref_hard = _read(GOLDEN / "predictions" / "hard" / f"fold={fold}" / ref_soft.name)
        mine = _read(tmp_path / "hard" / ref_soft.name)
        equal += int((mine.astype(int) == ref_hard.astype(int)).sum())
        total += ref_hard.size
    assert worst <= 1e-4
    assert equal / total >= 0.9999
    assert hard.threshold == 0.48


def test_two_fold_average_and_submission_match_the_reference(tmp_path: Path) -> None:
    layout = data_dir_with_golden(tmp_path)
    weights = [1.0, 0.6]
    # the reference divided by sum(w) + w_first; its 0.5 on that is this on the true weighted mean
    threshold = reference_equivalent_threshold(0.5, weights)
    res = cv_predict(
        [GOLDEN / "runs" / "fold=0", GOLDEN / "runs" / "fold=1"],
        layout,
        version="golden",
        name="golden",
        weights=weights,
        threshold=threshold,
        mode="soft",
        options=_options(),
        previews=0,
    )
    expected = sorted((GOLDEN / "predictions" / "avg" / "predictions").glob("*_kelp.tif"))
    equal = total = 0
    for path in expected:
        mine = _read(res.predictions / path.name)
        ref = _read(path)
        equal += int((mine.astype(int) == ref.astype(int)).sum())
        total += ref.size
    assert equal / total >= 0.9999

    def members(tar_path: Path) -> dict[str, np.ndarray]:
        with tarfile.open(tar_path) as tar:
            out = {}
            for m in tar.getmembers():
                data = tar.extractfile(m)
                assert data is not None
                with rasterio.open(BytesIO(data.read())) as src:
                    out[m.name] = src.read(1).astype(int)
            return out

    ours, theirs = members(res.tar), members(GOLDEN / "predictions" / "avg" / "submission.tar")
    assert sorted(ours) == sorted(theirs)
    same = sum(int((ours[k] == theirs[k]).sum()) for k in theirs)
    assert same / sum(v.size for v in theirs.values()) >= 0.9999
