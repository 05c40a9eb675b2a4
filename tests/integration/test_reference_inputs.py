"""The reference's files as kelpseg inputs: import-run, training from its stats JSON and split
parquet, and one-line errors for reference run dirs that do not fit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from builders import prepared_synthetic, tiny_train_config
from kelpseg.errors import KelpsegError
from kelpseg.infer.predict import InferenceOptions, predict_folder
from kelpseg.train.run import load_run, train

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(os.environ.get("KELPSEG_REFERENCE_ARTIFACTS", REPO.parent / "shared" / "reference-artifacts"))
needs_golden = pytest.mark.skipif(
    not (GOLDEN / "runs").is_dir(), reason=f"reference golden set not found at {GOLDEN}"
)
STATS_NAME = "2026-12-01T21:02:51-stats-fill_value=nan-mask_using_qa=True-mask_using_water_mask=True.json"
TILES = ["GT981497", "KN192289"]


def _copy_run(tmp_path: Path, fold: int = 0) -> Path:
    """An MLflow-layout copy of a golden run (checkpoints linked, config and aliases copied)."""
    src = GOLDEN / "runs" / f"fold={fold}"
    dst = tmp_path / f"run{fold}"
    shutil.copytree(src, dst, symlinks=True, copy_function=os.symlink)
    config = dst / "artifacts" / "config.yaml"
    config.unlink()
    shutil.copyfile(src / "artifacts" / "config.yaml", config)
    for aliases in (dst / "artifacts" / "model" / "checkpoints").glob("*/aliases.txt"):
        text = aliases.read_text()
        aliases.unlink()
        aliases.write_text(text)
    return dst


def _edit_config(run: Path, old: str, new: str) -> Path:
    path = run / "artifacts" / "config.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


# ---- training from the reference's stats JSON and split parquet --------------------------------
def _to_reference_stats(channels: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = ("mean", "std", "min", "max", "q01", "q99")
    out = {name: {k: float(stats[k]) for k in keys} for name, stats in channels.items()}
    out["NDVI"]["min"], out["NDVI"]["max"] = float("inf"), float("-inf")  # as its stats script leaves them
    return out


def test_training_reads_the_reference_stats_json_and_split_parquet(tmp_path: Path) -> None:
    layout = prepared_synthetic(tmp_path / "data", 12, 2, 2, seed=5)
    own_stats = next(layout.band_stats_dir.glob("*.json"))
    channels = json.loads(own_stats.read_text())["channels"]
    (layout.processed / STATS_NAME).write_text(json.dumps(_to_reference_stats(channels), indent=4))
    shutil.rmtree(layout.band_stats_dir)
    split = pd.read_parquet(layout.split_path("cross_val"))
    split.to_parquet(layout.processed / "train_val_test_dataset.parquet", index=False)
    layout.split_path("cross_val").unlink()

    run_dir = train(tiny_train_config(layout, tmp_path / "runs", steps=2, epochs=1), progress=False)

    recorded = json.loads((run_dir / "split.json").read_text())
    assert Path(recorded["path"]).name == "train_val_test_dataset.parquet"
    stats = json.loads((run_dir / "band_stats.json").read_text())["channels"]
    assert stats["NDVI"]["min"] == pytest.approx(channels["NDVI"]["q01"])  # repaired fill value
    assert stats["NDVI"]["q99"] == pytest.approx(channels["NDVI"]["q99"])
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    run = load_run(run_dir)
    assert run.transform.in_channels == 9


@needs_golden
def test_golden_stats_json_loads_as_training_input() -> None:
    from kelpseg.train.datamodule import load_stats

    stats = load_stats(GOLDEN / "processed" / STATS_NAME)
    assert len(stats.channels) == 66
    assert all(np.isfinite(v) for s in stats.channels.values() for v in s.values())
    assert stats.options == {"fill_value": "nan", "mask_using_qa": True, "mask_using_water_mask": True}


# ---- import-run --------------------------------------------------------------------------------
@needs_golden
def test_imported_run_predicts_like_the_reference(tmp_path: Path) -> None:
    from kelpseg.reference.importer import import_run

    out = import_run(GOLDEN / "runs" / "fold=1", tmp_path / "imported", data_dir=GOLDEN)
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    images = [GOLDEN / "raw" / "test" / "images" / f"{t}_satellite.tif" for t in TILES]
    options = InferenceOptions(num_workers=0, progress=False)  # no data dir: the run carries its stats
    predict_folder(out, images, tmp_path / "pred", soft=True, options=options)
    for t in TILES:
        with rasterio.open(tmp_path / "pred" / f"{t}_kelp.tif") as a:
            ours = a.read(1)
        with rasterio.open(GOLDEN / "predictions" / "soft" / "fold=1" / f"{t}_kelp.tif") as b:
            ref = b.read(1)
        assert np.abs(ours - ref).max() <= 1e-4
    with pytest.raises(KelpsegError, match="not empty"):
        import_run(GOLDEN / "runs" / "fold=1", out, data_dir=GOLDEN)


# ---- bad input ---------------------------------------------------------------------------------
def test_a_folder_that_is_no_run_dir_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(KelpsegError, match=r"empty: not a run directory.*model/.*artifacts/"):
        load_run(tmp_path / "empty")


@needs_golden
def test_no_checkpoint_with_the_best_alias(tmp_path: Path) -> None:
    run = _copy_run(tmp_path)
    for aliases in (run / "artifacts" / "model" / "checkpoints").glob("*/aliases.txt"):
        aliases.write_text("['latest']")
    with pytest.raises(
        KelpsegError, match=r"checkpoints: no checkpoint folder whose aliases.txt names 'best'"
    ):
        load_run(run, data_dir=GOLDEN)
    assert load_run(run, "latest", data_dir=GOLDEN).checkpoint.name == "last.ckpt"


@needs_golden
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("- mCRIG", "- NOTANINDEX", r"config.yaml.*NOTANINDEX"),
        ("encoder: tu-mobilenetv3_small_050", "encoder: tu-nosuchnet_b9", r"config.yaml.*nosuchnet"),
        ("- 4\n", "- 8\n", r"ckpt: weights do not fit .*decoder \[64, 32, 16, 8, 8\]"),
        ("- mCRIG\n", "", r"ckpt: trained with 24 input channels, but .*config.yaml gives 23"),
        ("architecture: unet", "architecture: resunet++", r"config.yaml: architecture 'resunet\+\+'"),
    ],
)
def test_a_config_that_does_not_fit_is_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    run = _copy_run(tmp_path)
    _edit_config(run, old, new)
    with pytest.raises(KelpsegError, match=message):
        load_run(run, data_dir=GOLDEN)


@needs_golden
def test_stats_lacking_a_channel_are_named(tmp_path: Path) -> None:
    stats = json.loads((GOLDEN / "processed" / STATS_NAME).read_text())
    del stats["KIVU"]
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats))
    with pytest.raises(KelpsegError, match=r"stats.json: no statistics for channel\(s\) KIVU"):
        load_run(GOLDEN / "runs" / "fold=0", band_stats=path)
    with pytest.raises(KelpsegError, match=r"pass --band-stats FILE or --data-dir"):
        load_run(GOLDEN / "runs" / "fold=0")
