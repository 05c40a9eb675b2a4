"""The whole job (synth → prep → train → predict → ensemble → submission) on small data, and the
CPU recipe learning on every fold of it.

On the project's generator (its default settings and its harder ones), each fold's validation
Dice must beat the NDVI baseline fitted on the same tiles. The recipe runs shortened (``SHORT``:
a fifteenth of its optimiser steps, the same schedule compressed) so that the test fits in CI;
docs/learning.md gives the full recipe's figures on 5 folds x 2 seeds.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from kelpseg.layout import DataLayout
from kelpseg.pipeline import PipelineOptions, PipelineSummary, run_pipeline
from kelpseg.recipes import train_recipe
from kelpseg.synthetic import MAX_CROP_OFFSET, SynthConfig, generate_dataset

pytestmark = pytest.mark.slow

#: The generator's harder settings: more cloud, fewer kelp tiles, misaligned bands, revisits at
#: offsets up to a third of a tile and a misregistered DEM on a third of the dates.
HARDER = SynthConfig(
    p_cloud=0.6,
    kelp_aoi_tile_fraction=0.4,
    p_misaligned=0.3,
    max_crop_offset=MAX_CROP_OFFSET,
    p_dem_misregistration=0.3,
)

#: cpu-demo at 3 x 256 samples instead of 16 x 384, validated once at the end (and checked).
SHORT = ["epochs=3", "samples_per_epoch=256", "val_every_n_epochs=3", "learning_check_after=1"]


def _options(seed: int, runs: Path, overrides: list[str], folds: int = 2) -> PipelineOptions:
    return PipelineOptions(
        workers=2,
        config=train_recipe("cpu-demo"),  # also on a machine with a GPU (where `run` picks best)
        folds=folds,
        n_splits=2,
        n_train=48,
        n_test=4,
        seed=seed,
        overrides=[*overrides, f"output_dir={runs}", "mlflow=false", "preview_n_tiles=0"],
        progress=False,
    )


@pytest.mark.parametrize(
    ("seed", "synth"), [(21, None), (22, HARDER)], ids=["default-seed21", "harder-seed22"]
)
def test_every_fold_of_the_cpu_recipe_beats_the_ndvi_baseline(
    seed: int, synth: SynthConfig | None, tmp_path: Path
) -> None:
    layout = DataLayout(tmp_path / "data")
    if synth is not None:  # the default settings are what `run` generates itself
        generate_dataset(layout.root, 48, 4, seed=seed, workers=2, progress=False, config=synth)
    messages: list[str] = []
    summary = run_pipeline(layout, _options(seed, tmp_path / "runs", SHORT), say=messages.append)

    rows = summary.fold_rows
    assert [r["fold"] for r in rows] == [0, 1]
    for row in rows:
        assert row["val_tiles"] >= 20
        assert row["val_dice"] > row["ndvi_baseline_val_dice"], row
        assert row["check"] == "ok" and row["learning"] == "ok" and row["retried"] == 0, row
        assert (Path(row["run_dir"]) / "threshold.json").exists()
    assert not [m for m in messages if m.startswith("warning: fold")]
    for key in ("val_dice_mean", "ndvi_baseline_val_dice_mean", "test_dice", "ndvi_baseline_test_dice"):
        assert 0.0 <= summary.scores[key] <= 1.0, key
    if synth is None:
        _check_outputs(layout, summary, messages, seed, tmp_path / "runs-again")


def _check_outputs(
    layout: DataLayout, summary: PipelineSummary, messages: list[str], seed: int, runs: Path
) -> None:
    """What `kelpseg run` leaves behind on data it generated, and that running it again is safe."""
    assert summary.synthetic
    assert any("generating the synthetic demo dataset" in m for m in messages)
    assert summary.scores["aoi_ari"] >= 0.95

    tar = Path(summary.outputs["submission"])
    test_ids = sorted(p.name.split("_")[0] for p in layout.test_images.glob("*_satellite.tif"))
    assert len(test_ids) == 4
    with tarfile.open(tar) as archive:
        assert sorted(m.name for m in archive.getmembers()) == [f"{t}_kelp.tif" for t in test_ids]
    assert list(Path(summary.outputs["previews"]).glob("*.png"))

    written = json.loads((layout.root / "run-summary.json").read_text())
    assert written["scores"] == summary.scores
    assert [f["check"] for f in written["folds"]] == ["ok", "ok"]
    assert set(written["stage_seconds"]) >= {"data", "aoi grouping", "eda", "band stats", "cv split"}

    # A second run (one fold, a few steps) reuses the data and replaces the outputs safely.
    tiny = ["epochs=1", "samples_per_epoch=16", "batch_size=4", "num_workers=0"]
    again = run_pipeline(layout, _options(seed, runs, tiny, folds=1), say=messages.append)
    assert again.outputs["submission"] == summary.outputs["submission"]
    assert sum("generating the synthetic demo dataset" in m for m in messages) == 1
    assert [r["fold"] for r in again.fold_rows] == [0]
    with tarfile.open(tar) as archive:
        assert sorted(m.name for m in archive.getmembers()) == [f"{t}_kelp.tif" for t in test_ids]
