"""KelpSegmentationModule on random raw batches (no files): steps, metrics, NaN guard, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from kelpseg.bands import BANDS, TILE_SIZE
from kelpseg.train.config import TrainConfig
from kelpseg.train.module import KelpSegmentationModule, NonFiniteLossError
from kelpseg.train.transforms import random_crop

INDICES = ["DEMWM", "NDVI"]


def fake_band_stats() -> dict[str, dict[str, Any]]:
    stats = {
        b: {"min": 0.0, "max": 20000.0, "q01": 5000.0, "q99": 12000.0, "mean": 8000.0, "std": 2000.0}
        for b in BANDS
    }
    stats["QA"] = {"min": 0.0, "max": 1.0, "q01": 0.0, "q99": 1.0, "mean": 0.1, "std": 0.3}
    stats["DEM"] = {"min": -5.0, "max": 300.0, "q01": 0.0, "q99": 100.0, "mean": 10.0, "std": 20.0}
    stats["DEMWM"] = {"min": 0.0, "max": 1.0, "q01": 0.0, "q99": 1.0, "mean": 0.2, "std": 0.4}
    stats["NDVI"] = {"min": -1.0, "max": 1.0, "q01": -0.5, "q99": 0.8, "mean": 0.0, "std": 0.3}
    return stats


def raw_batch(n: int, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(5000, 12000, (n, 7, TILE_SIZE, TILE_SIZE), generator=gen).float()
    image[:, 5] = 0.0  # QA ok
    image[:, 6] = torch.randint(-5, 30, (n, TILE_SIZE, TILE_SIZE), generator=gen).float()
    image[:, 6, :10] = float("nan")  # DEM nodata strip
    mask = (torch.rand(n, TILE_SIZE, TILE_SIZE, generator=gen) > 0.8).to(torch.uint8)
    return {"image": image, "mask": mask, "tile_id": [f"T{i}" for i in range(n)]}


def tiny_config(**overrides: Any) -> TrainConfig:
    options: dict[str, Any] = {
        "encoder": "resnet18",
        "decoder_channels": [16, 8, 4],
        "spectral_indices": INDICES,
        "train_crop_size": 64,
        "batch_size": 2,
        "lr_scheduler": "none",
        "mlflow": False,
        "accelerator": "cpu",
        "devices": 1,
        "epochs": 1,
    }
    options.update(overrides)
    return TrainConfig(**options)


class FakeDataModule(pl.LightningDataModule):
    def __init__(self, n_train: int = 4, n_val: int = 2) -> None:
        super().__init__()
        self.train_items = _items(raw_batch(n_train, seed=1))
        self.val_items = _items(raw_batch(n_val, seed=2))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_items, batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_items, batch_size=2)


def _items(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"image": batch["image"][i], "mask": batch["mask"][i], "tile_id": batch["tile_id"][i]}
        for i in range(len(batch["tile_id"]))
    ]


def test_module_owns_model_and_transform() -> None:
    module = KelpSegmentationModule(tiny_config(), fake_band_stats())
    assert module.transform.channel_names == ["R", "G", "B", "SWIR", "NIR", "QA", "DEM", *INDICES]
    assert module.model.encoder.conv1.in_channels == 9
    assert set(module.hparams) == {"config", "band_stats", "in_channels"}
    assert set(module.hparams["band_stats"]) == set(module.transform.channel_names)
    probs = module.eval().predict_tiles(raw_batch(1)["image"])
    assert probs.shape == (1, TILE_SIZE, TILE_SIZE) and probs.min() >= 0 and probs.max() <= 1


def test_training_batch_is_cropped_and_augmented_consistently() -> None:
    module = KelpSegmentationModule(tiny_config(train_crop_size=64), fake_band_stats())
    x, mask = module._prepare_train_batch(raw_batch(2))
    assert x.shape == (2, 9, 64, 64) and mask.shape == (2, 64, 64) and torch.isfinite(x).all()
    full = KelpSegmentationModule(tiny_config(train_crop_size=None, augment=False), fake_band_stats())
    x, mask = full._prepare_train_batch(raw_batch(2))
    assert x.shape == (2, 9, 352, 352) and mask.shape == (2, 352, 352)


@pytest.mark.parametrize("crop_first", [True, False], ids=["raw-crop", "transformed-crop"])
def test_kelp_crop_probability_puts_each_kelp_sample_s_window_on_its_kelp(crop_first: bool) -> None:
    batch = raw_batch(4, seed=2)
    batch["mask"].zero_()
    spots = [(3, 340), (200, 5), (349, 349)]  # one kelp pixel per sample; the last sample has none
    for i, (row, col) in enumerate(spots):
        batch["mask"][i, row, col] = 1
    # per-sample normalisation crops after the transform, on the padded tile and mask
    options = {} if crop_first else {"normalization_strategy": "per-sample-min-max"}
    module = KelpSegmentationModule(tiny_config(kelp_crop_probability=1.0, **options), fake_band_stats())
    assert module._crop_first() is crop_first
    _, mask = module._prepare_train_batch(batch)
    assert mask.shape == (4, 64, 64)
    assert [int(m.sum()) for m in mask] == [1, 1, 1, 0]
    uniform = KelpSegmentationModule(tiny_config(**options), fake_band_stats())
    _, mask = uniform._prepare_train_batch(batch)
    assert int(mask[:3].sum()) < 3  # uniform 64-px windows of 350: each holds its pixel ~3 % of the time


def test_batch_transformed_in_the_workers_trains_on_the_same_input() -> None:
    """A batch carrying ``input`` (the loader workers' transform, see TransformingCollate) gives the
    training step exactly the input and mask it computes itself from the raw tiles."""
    from kelpseg.train.transforms import TransformingCollate

    config = tiny_config(train_crop_size=None)
    module_a = KelpSegmentationModule(config, fake_band_stats())
    module_b = KelpSegmentationModule(config, fake_band_stats())
    batch = raw_batch(2, seed=3)
    collated = TransformingCollate(module_a.transform)(_items(batch))
    assert collated["input"].shape == (2, 9, 352, 352)
    x_a, mask_a = module_a._prepare_train_batch(collated)  # same seed: same augmentation draws
    x_b, mask_b = module_b._prepare_train_batch(batch)
    assert torch.equal(x_a, x_b) and torch.equal(mask_a, mask_b)
    collated["input"] = torch.zeros_like(collated["input"])  # the step really uses the given input
    x_zero, _ = KelpSegmentationModule(config, fake_band_stats())._prepare_train_batch(collated)
    assert x_zero.abs().max() == 0


def test_cropping_the_raw_tile_equals_cropping_the_transform() -> None:
    """The fast path (crop, then transform) is exact for padded, stats-normalised inputs."""
    module = KelpSegmentationModule(tiny_config(), fake_band_stats())
    batch = raw_batch(2)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    raw_crop, mask_crop = random_crop(batch["image"], batch["mask"], 64, gen_a)
    fast = module.transform.normalize(module.transform.features(raw_crop))
    tops = torch.randint(0, TILE_SIZE - 64 + 1, (2,), generator=gen_b)
    lefts = torch.randint(0, TILE_SIZE - 64 + 1, (2,), generator=gen_b)
    full = module.transform(batch["image"])
    for i in range(2):
        y, x = int(tops[i]) + 1, int(lefts[i]) + 1  # 350 -> 352 pads one pixel each side
        torch.testing.assert_close(fast[i], full[i, :, y : y + 64, x : x + 64])
        torch.testing.assert_close(
            mask_crop[i], module.transform.pad_mask(batch["mask"])[i, y : y + 64, x : x + 64]
        )


def test_fit_logs_the_validation_metrics(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    module = KelpSegmentationModule(tiny_config(lr_scheduler="onecycle"), fake_band_stats())
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=FakeDataModule())
    metrics = trainer.callback_metrics
    for key in (
        "val/dice",
        "val/iou",
        "val/precision",
        "val/recall",
        "val/macro_dice",
        "val/loss",
        "train/loss",
    ):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0 <= metrics["val/dice"] <= 1
    assert module.train_loss_epoch() is not None
    # Validation counted exactly the 2 tiles x 350 x 350 pixels (padding excluded) - reset after the epoch.
    assert int(module.val_metric.tp + module.val_metric.fp + module.val_metric.fn + module.val_metric.tn) == 0


def test_validation_counts_only_the_tile_area() -> None:
    module = KelpSegmentationModule(tiny_config(), fake_band_stats()).eval()
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    with torch.no_grad():
        module.validation_step(raw_batch(2), 0)
    counts = module.val_metric
    assert int(counts.tp + counts.fp + counts.fn + counts.tn) == 2 * TILE_SIZE * TILE_SIZE


def test_nan_loss_names_the_global_step() -> None:
    module = KelpSegmentationModule(tiny_config(), fake_band_stats())

    class NanLoss(torch.nn.Module):
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return logits.sum() * float("nan")

    module.loss_fn = NanLoss()
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at global step 0 \(epoch 0\)"):
        module.training_step(raw_batch(2), 0)


def test_checkpoint_with_non_finite_weights_is_refused() -> None:
    module = KelpSegmentationModule(tiny_config(), fake_band_stats())
    module.on_save_checkpoint({})  # finite weights: fine
    with torch.no_grad():
        next(module.model.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"weights became non-finite .* not saving this checkpoint"):
        module.on_save_checkpoint({})


def test_checkpoint_round_trip_needs_no_other_file(tmp_path: Path) -> None:
    module = KelpSegmentationModule(tiny_config(), fake_band_stats()).eval()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = KelpSegmentationModule.load_from_checkpoint(path, map_location="cpu", weights_only=False).eval()
    assert loaded.config == module.config
    raw = raw_batch(1)["image"]
    torch.testing.assert_close(loaded.predict_tiles(raw), module.predict_tiles(raw))
