"""The whole job on tiny data: synth → prep → train (few steps) → predict → ensemble → submission."""

import json
import tarfile
from pathlib import Path

import pytest

from kelpseg.layout import DataLayout
from kelpseg.pipeline import PipelineOptions, run_pipeline


@pytest.mark.slow
def test_run_pipeline_end_to_end(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "data")
    options = PipelineOptions(
        workers=2,
        folds=2,
        n_splits=3,
        n_train=24,
        n_test=4,
        seed=3,
        overrides=[
            "epochs=1",
            "samples_per_epoch=16",
            "batch_size=4",
            "num_workers=0",
            f"output_dir={tmp_path / 'runs'}",
            "mlflow=false",
        ],
        progress=False,
    )
    messages: list[str] = []
    summary = run_pipeline(layout, options, say=messages.append)

    assert summary.synthetic
    assert [r["fold"] for r in summary.fold_rows] == [0, 1]
    for row in summary.fold_rows:
        assert 0.0 <= row["val_dice"] <= 1.0
        assert 0.0 <= row["ndvi_baseline_val_dice"] <= 1.0
        assert (Path(row["run_dir"]) / "threshold.json").exists()
    for key in (
        "aoi_ari",
        "val_dice_mean",
        "ndvi_baseline_val_dice_mean",
        "test_dice",
        "ndvi_baseline_test_dice",
    ):
        assert 0.0 <= summary.scores[key] <= 1.0, key
    assert summary.scores["aoi_ari"] >= 0.95

    tar = Path(summary.outputs["submission"])
    test_ids = sorted(p.name.split("_")[0] for p in layout.test_images.glob("*_satellite.tif"))
    with tarfile.open(tar) as archive:
        assert sorted(m.name for m in archive.getmembers()) == [f"{t}_kelp.tif" for t in test_ids]
    assert list(Path(summary.outputs["previews"]).glob("*.png"))

    written = json.loads((layout.root / "run-summary.json").read_text())
    assert written["scores"] == summary.scores
    assert set(written["stage_seconds"]) >= {"data", "aoi grouping", "eda", "band stats", "cv split"}
    assert any("generating the synthetic demo dataset" in m for m in messages)

    # A second run reuses the data and is safe to repeat.
    again = run_pipeline(layout, options, say=messages.append)
    assert again.outputs["submission"] == summary.outputs["submission"]
