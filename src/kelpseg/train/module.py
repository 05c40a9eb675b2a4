"""The LightningModule: model + batch transform + loss + the competition metric.

The module owns the ``BatchTransform`` (band selection, indices, masking, normalisation, padding)
as a sub-module, so a checkpoint holds everything inference needs: ``load_from_checkpoint``
rebuilds the config, the channel statistics and the network from the file alone.

Training step: raw batch -> transform -> pad mask -> augment (exact flips / 90° turns, optional
random crop) -> model -> loss. A non-finite loss stops training with a message naming the
global step; checkpoints are refused while any weight is non-finite, so ``last.ckpt`` always
holds the last good state.

Validation: whole tiles, padded to the model size, predicted, cropped back to 350 × 350 (the
padding never counts), then loss and the global kelp Dice over all validation pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from kelpseg.bands import TILE_SIZE
from kelpseg.errors import KelpsegError
from kelpseg.train.config import TrainConfig
from kelpseg.train.losses import create_loss, loss_options
from kelpseg.train.metrics import METRIC_NAMES, KelpDiceMetric
from kelpseg.train.models import create_model
from kelpseg.train.optim import configure_optimizers
from kelpseg.train.transforms import BatchTransform, augment, channel_table, random_crop


class NonFiniteLossError(KelpsegError):
    """The training loss (or the weights) became NaN or infinite."""


def band_stats_table(band_stats: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """The plain ``channel -> stats`` dict of the channels a model uses (stored in its checkpoint)."""
    table = channel_table(band_stats)
    return {name: dict(table[name]) for name in names if name in table}


def model_from_config(config: TrainConfig, in_channels: int | None = None) -> torch.nn.Module:
    """``create_model`` with the model options of ``config`` (``in_channels`` default: the config's)."""
    return create_model(
        config.architecture,
        config.encoder,
        in_channels if in_channels is not None else config.in_channels,
        encoder_weights=config.encoder_weights,
        decoder_channels=config.decoder_channels,
        decoder_attention_type=config.decoder_attention_type,
        input_size=config.image_size if config.resize_strategy == "resize" else None,
        output_bias_prior=config.output_bias_prior,
    )


class KelpSegmentationModule(pl.LightningModule):
    """UNet-style kelp segmenter with its input transform; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig | Mapping[str, Any],
        band_stats: Any,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
        self.transform = BatchTransform.from_config(self.config, band_stats)
        channels = in_channels if in_channels is not None else self.transform.in_channels
        stats = band_stats_table(band_stats, self.transform.channel_names)
        # Plain data only, so the checkpoint loads without our config class being importable
        # by the unpickler and so hparams.yaml stays readable.
        self.save_hyperparameters(
            {"config": self.config.to_dict(), "band_stats": stats, "in_channels": channels}, logger=False
        )
        self.model = model_from_config(self.config, channels)
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = create_loss(self.config.loss, **loss_options(self.config.to_dict()))
        self.val_metric = KelpDiceMetric(threshold=self.config.decision_threshold)
        self._generator: torch.Generator | None = None
        self._train_loss_sum = 0.0
        self._train_loss_count = 0
        self.last_val_counts: tuple[int, int, int, int] | None = None

    # ---- inference ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, padded input (N, C, S, S) -> kelp logits (N, 1, S, S)."""
        return self.model(self._layout(x))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """The model input in the model's memory layout (channels-last when configured)."""
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    @torch.no_grad()
    def predict_tiles(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw tiles (N, 7, 350, 350) -> kelp probabilities (N, 350, 350)."""
        logits = self(self.transform(raw))
        return torch.sigmoid(self.transform.unpad(logits).float())[:, 0]

    # ---- training -------------------------------------------------------------------------------
    def _augment_generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.config.seed + 1000 * self.global_rank)
        return self._generator

    def _crop_first(self) -> bool:
        """Crop the raw tile before the transform (same result, far less work) when that is exact.

        True for padded inputs with stats-based normalisation: every pixel is transformed on its
        own there, so transforming a crop equals cropping the transform. Per-sample statistics and
        resizing depend on the whole tile, so those crop after the transform.
        """
        cfg = self.config
        return (
            cfg.train_crop_size is not None
            and cfg.train_crop_size <= TILE_SIZE
            and cfg.resize_strategy == "pad"
            and not cfg.normalization_strategy.startswith("per-sample")
        )

    def _prepare_train_batch(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw batch -> augmented model input and mask (crop, if configured, then flips / rotations)."""
        gen = self._augment_generator()
        crop = self.config.train_crop_size
        towards_kelp = self.config.kelp_crop_probability
        with torch.no_grad():
            if self._crop_first():
                raw, mask = random_crop(batch["image"], batch["mask"], int(crop), gen, towards_kelp)
                x = self.transform.normalize(self.transform.features(raw))
                crop = None
            else:
                x = batch["input"] if "input" in batch else self.transform(batch["image"])
                mask = self.transform.pad_mask(batch["mask"])
            if self.config.augment:
                x, mask = augment(x, mask, gen, crop_size=crop, kelp_crop_probability=towards_kelp)
            elif crop is not None:
                x, mask = random_crop(x, mask, crop, gen, towards_kelp)
        return x, mask

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        x, mask = self._prepare_train_batch(batch)
        logits = self(x)
        loss = self.loss_fn(logits, mask)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}); stopped, the last checkpoint with finite weights is kept "
                "(try a lower lr or precision=32-true)"
            )
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0])
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        self._train_loss_sum += float(loss.detach()) * x.shape[0]
        self._train_loss_count += x.shape[0]
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_loss_sum = 0.0
        self._train_loss_count = 0

    def train_loss_epoch(self) -> float | None:
        """Mean training loss per sample over the current epoch so far (this process)."""
        return self._train_loss_sum / self._train_loss_count if self._train_loss_count else None

    # ---- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        mask = batch["mask"]
        x = batch["input"] if "input" in batch else self.transform(batch["image"])
        logits = self.transform.unpad(self(x))
        loss = self.loss_fn(logits.float(), mask)
        self.log("val/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=mask.shape[0])
        self.val_metric.update(torch.sigmoid(logits.float()), mask)

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metric.compute()
        m = self.val_metric
        # kept for the learning check (kelpseg.train.health): did any pixel reach the threshold?
        self.last_val_counts = (int(m.tp), int(m.fp), int(m.fn), int(m.tn))
        self.val_metric.reset()
        for name in METRIC_NAMES:
            # Already global (the counts are summed over processes); sync_dist only silences Lightning.
            self.log(f"val/{name}", scores[name], prog_bar=name == "dice", sync_dist=True)

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        trainer = self.trainer
        return configure_optimizers(
            self.config,
            [p for p in self.model.parameters() if p.requires_grad],
            int(trainer.estimated_stepping_batches),
            trainer.max_epochs or 1,
        )

    # ---- checkpoints ----------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints from before unused encoder stages were dropped still load: the weights of
        the stages this model replaced by ``nn.Identity`` are left out."""
        state = checkpoint.get("state_dict") or {}
        own = self.state_dict()
        for key in [k for k in state if k not in own and self._dropped(k)]:
            del state[key]

    def _dropped(self, key: str) -> bool:
        parts = key.split(".")
        for i in range(1, len(parts)):
            try:
                module = self.get_submodule(".".join(parts[:i]))
            except AttributeError:
                return False
            if isinstance(module, torch.nn.Identity):
                return True
        return False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = [name for name, p in self.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"weights became non-finite ({len(bad)} tensors, e.g. {bad[0]}) at global step "
                f"{self.global_step}; not saving this checkpoint, the last good one is kept"
            )
