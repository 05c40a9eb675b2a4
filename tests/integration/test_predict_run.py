"""End to end on a tiny trained run: threshold fit, prediction, ensemble, submission."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from kelpseg.bands import FILL_VALUE
from kelpseg.infer.ensemble import ensemble_folders
from kelpseg.infer.predict import InferenceOptions, evaluate_run, predict_folder
from kelpseg.infer.submission import check_submission, write_submission
from kelpseg.io.metadata import write_metadata
from kelpseg.io.tiles import read_mask, write_geotiff
from kelpseg.layout import DataLayout

pytestmark = pytest.mark.slow
S = 350
TRAIN = [f"TR{i:03d}" for i in range(6)]
TEST = ["TE001", "TE002"]


def _tile_and_mask(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Water tile with a bright-NIR kelp blob (the mask) and a land strip with positive DEM."""
    rng = np.random.default_rng(seed)
    tile = rng.normal(7000, 150, size=(7, S, S))
    mask = np.zeros((S, S), np.uint8)
    r, c = rng.integers(60, 280, size=2)
    mask[r : r + 40, c : c + 40] = 1
    tile[1] += 2500.0 * mask  # NIR
    tile[5] = 0  # QA clear
    tile[6] = 0  # DEM: water
    tile[6, :30] = 40  # land
    tile[:, :30] += 3000
    tile[6, 30:35] = FILL_VALUE
    return np.round(tile).astype(np.int16), mask


def _dataset(root: Path) -> DataLayout:
    layout = DataLayout(root)
    rows = []
    for i, tid in enumerate(TRAIN + TEST):
        split = "train" if tid in TRAIN else "test"
        tile, mask = _tile_and_mask(i)
        write_geotiff(layout.image_path(tid, split), tile, "int16")
        rows.append(
            {
                "tile_id": tid,
                "filename": f"{tid}_satellite.tif",
                "type": "satellite",
                "in_train": split == "train",
            }
        )
        if split == "train":
            write_geotiff(layout.mask_path(tid), mask, "uint8")
            rows.append({"tile_id": tid, "filename": f"{tid}_kelp.tif", "type": "kelp", "in_train": True})
    meta = pd.DataFrame(rows).assign(md5_hash="0" * 32, filesize_bytes=1)
    write_metadata(layout.metadata_csv, meta)
    split = pd.DataFrame(
        {
            "tile_id": TRAIN + TEST,
            "original_split": ["train"] * len(TRAIN) + ["test"] * len(TEST),
            "split_0": ["train"] * 4 + ["val"] * 2 + ["test"] * len(TEST),
        }
    )
    layout.split_path("cross_val").parent.mkdir(parents=True, exist_ok=True)
    split.to_parquet(layout.split_path("cross_val"), index=False)
    return layout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataLayout, Path]:
    from kelpseg.prep.band_stats import compute_band_stats
    from kelpseg.train.config import TrainConfig
    from kelpseg.train.run import train

    root = tmp_path_factory.mktemp("tiny")
    layout = _dataset(root / "data")
    compute_band_stats(layout, indices=["DEMWM", "NDVI"], workers=1, progress=False)
    config = TrainConfig(
        data_dir=str(layout.root),
        architecture="unet",
        encoder="resnet18",
        encoder_weights=None,
        decoder_channels=[16, 16, 8, 8, 4],
        epochs=1,
        batch_size=2,
        train_crop_size=64,
        use_weighted_sampler=False,
        num_workers=0,
        lr_scheduler="none",
        mlflow=False,
        preview_n_tiles=0,
        accelerator="cpu",
        devices=1,
        output_dir=str(root / "runs"),
        run_name="tiny",
    )
    return layout, train(config, layout, progress=False)


def test_threshold_predict_ensemble_submit(tiny_run: tuple[DataLayout, Path], tmp_path: Path) -> None:
    layout, run_dir = tiny_run
    result = evaluate_run(
        run_dir, layout=layout, options=InferenceOptions(batch_size=2, num_workers=0, progress=False)
    )
    saved = json.loads((run_dir / "threshold.json").read_text())
    assert saved["threshold"] == result.threshold and 0.3 <= result.threshold <= 0.7
    assert saved["n_tiles"] == 2 and len(saved["grid"]) == 91

    hard = predict_folder(
        run_dir,
        layout.test_images,
        tmp_path / "hard",
        options=InferenceOptions(num_workers=0, progress=False),
    )
    assert hard.threshold == result.threshold and hard.threshold_source.endswith("threshold.json")
    soft = predict_folder(
        run_dir,
        layout.test_images,
        tmp_path / "soft",
        soft=True,
        options=InferenceOptions(
            tta=True, tta_transforms="flips", land_mask=True, num_workers=0, progress=False
        ),
    )
    for tid in TEST:
        assert read_mask(tmp_path / "hard" / f"{tid}_kelp.tif").shape == (S, S)
        with rasterio.open(tmp_path / "soft" / f"{tid}_kelp.tif") as src:
            prob = src.read(1)
        assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1
        assert prob[:30].max() == 0  # land mask
    assert json.loads(soft.config_path.read_text())["tta_transforms"] == [
        "identity",
        "hflip",
        "vflip",
        "rot180",
    ]

    ens = ensemble_folders(
        [tmp_path / "soft", tmp_path / "hard"], tmp_path / "ens", weights=[0.8, 0.2], progress=False
    )
    assert ens.n_tiles == 2
    tar = write_submission(tmp_path / "ens", layout, tmp_path / "submission.tar")
    assert check_submission(tar, layout) == []


def test_submission_workflows(tiny_run: tuple[DataLayout, Path], tmp_path: Path) -> None:
    """predict-and-submit and cv-predict: the archive holds exactly what a direct prediction gives."""
    from kelpseg.infer.workflows import cv_predict, predict_and_submit

    layout, run_dir = tiny_run
    opts = InferenceOptions(batch_size=2, num_workers=0, progress=False)
    single = predict_and_submit(run_dir, layout, name="one", threshold=0.5, options=opts, previews=1)
    assert single.folder == layout.submissions / "single-model" / "one"
    assert check_submission(single.tar, layout) == [] and single.n_tiles == len(TEST)
    assert len(single.previews) == 1 and single.previews[0].is_file()
    record = json.loads((single.folder / "workflow.json").read_text())
    assert record["threshold"] == 0.5 and record["threshold_source"] == "argument"
    assert record["batch_size"] == 2 and record["checkpoint"] == "best" and record["tta"] is False
    direct = predict_folder(run_dir, layout.test_images, tmp_path / "direct", threshold=0.5, options=opts)
    for path in direct.paths:
        assert np.array_equal(read_mask(single.predictions / path.name), read_mask(path))

    # the same model twice, unequal weights: the weighted mean is the model's own probability
    ens = cv_predict(
        [run_dir, run_dir],
        layout,
        "twice",
        "two",
        weights=[1.0, 3.0],
        threshold=0.5,
        options=opts,
        previews=0,
    )
    assert check_submission(ens.tar, layout) == [] and ens.weights == [1.0, 3.0]
    for k in (0, 1):
        member = layout.predictions / "twice" / f"fold={k}"
        with rasterio.open(member / f"{TEST[0]}_kelp.tif") as src:
            assert src.dtypes[0] == "float32"
    for path in direct.paths:
        differ = np.mean(read_mask(ens.predictions / path.name) != read_mask(path))
        assert differ < 1e-4  # float rounding at the threshold only
    record = json.loads((ens.folder / "workflow.json").read_text())
    assert record["weights"] == [1.0, 3.0] and record["mode"] == "soft" and len(record["run_dirs"]) == 2


def test_exported_onnx_prediction_equals_eager(tiny_run: tuple[DataLayout, Path], tmp_path: Path) -> None:
    """`kelpseg export`, then the default CPU backend predicts from the artefact; its probabilities
    equal fp32 eager PyTorch's within 1e-3, tile by tile, as written to disk."""
    from typer.testing import CliRunner

    from kelpseg.cli import app
    from kelpseg.infer.engine import PROBABILITY_TOLERANCE

    layout, run_dir = tiny_run
    result = CliRunner().invoke(app, ["export", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "export" / "model.onnx").is_file()
    info = json.loads((run_dir / "export" / "export.json").read_text())
    assert info["input"]["channels"] == 9 and info["max_probability_difference"] <= PROBABILITY_TOLERANCE
    probs = {}
    for backend in ("eager", "auto"):
        out = tmp_path / backend
        opts = InferenceOptions(backend=backend, batch_size=2, num_workers=0, progress=False)
        predict_folder(run_dir, layout.test_images, out, soft=True, options=opts)
        assert json.loads((out / "predict_config.json").read_text())["backend"] == backend
        probs[backend] = np.stack([rasterio.open(out / f"{t}_kelp.tif").read(1) for t in TEST])
    assert probs["eager"].std() > 0
    np.testing.assert_allclose(probs["auto"], probs["eager"], atol=PROBABILITY_TOLERANCE, rtol=0)
