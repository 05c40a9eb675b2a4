"""Validation previews: one PNG per chosen epoch showing a few fixed validation tiles.

``previews/epoch=<EEE>.png`` has one row per tile and five columns: true colour (R, G, B),
colour infrared (NIR, R, G), the ground-truth mask, the predicted kelp probability (0 black ..
1 yellow, viridis) and the predicted mask at the decision threshold. The tiles are chosen once
(kelp-rich tiles first, then others, by tile id) so that successive epochs can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

from kelpseg.bands import BANDS, band_positions
from kelpseg.io.atomic import save_figure
from kelpseg.prep.plotting import composite

COLUMNS = (
    "true colour (R,G,B)",
    "colour infrared (NIR,R,G)",
    "ground truth",
    "kelp probability",
    "prediction",
)


def choose_preview_tiles(frame: pd.DataFrame, n: int) -> list[str]:
    """``n`` fixed validation tile ids: tiles with the most kelp first (half), then the rest by id."""
    if n <= 0 or frame.empty:
        return []
    ids = frame["tile_id"].astype(str)
    if "kelp_pixels" in frame.columns:
        kelp = frame.assign(_id=ids).sort_values(["kelp_pixels", "_id"], ascending=[False, True])
        with_kelp = kelp.loc[kelp["kelp_pixels"] > 0, "_id"].tolist()[: max(1, n // 2 + n % 2)]
    else:
        with_kelp = []
    rest = [t for t in sorted(ids) if t not in with_kelp]
    return (with_kelp + rest)[:n]


def preview_figure(
    raw: np.ndarray,
    masks: np.ndarray,
    probs: np.ndarray,
    tile_ids: Sequence[str],
    threshold: float,
    title: str,
) -> Any:
    """Matplotlib figure for raw tiles (N, 7, H, W), masks (N, H, W) and probabilities (N, H, W)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    positions = band_positions(BANDS)
    n = len(tile_ids)
    fig, axes = plt.subplots(n, len(COLUMNS), figsize=(2.6 * len(COLUMNS), 2.6 * n + 0.4), squeeze=False)
    for row, tile_id in enumerate(tile_ids):
        panels = [
            (composite(raw[row], ("R", "G", "B"), positions), {}),
            (composite(raw[row], ("NIR", "R", "G"), positions), {}),
            (masks[row], {"cmap": "gray", "vmin": 0, "vmax": 1}),
            (probs[row], {"cmap": "viridis", "vmin": 0, "vmax": 1}),
            ((probs[row] >= threshold).astype(np.uint8), {"cmap": "gray", "vmin": 0, "vmax": 1}),
        ]
        for col, (image, kwargs) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, interpolation="nearest", **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(COLUMNS[col], fontsize=8)
        axes[row, 0].set_ylabel(tile_id, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def write_preview(
    path: Path,
    raw: np.ndarray,
    masks: np.ndarray,
    probs: np.ndarray,
    tile_ids: Sequence[str],
    threshold: float,
    title: str,
) -> Path:
    from matplotlib import pyplot as plt

    fig = preview_figure(raw, masks, probs, tile_ids, threshold, title)
    try:
        save_figure(path, fig, dpi=72)
    finally:
        plt.close(fig)
    return path


class PreviewCallback(pl.Callback):
    """After validation of every ``every_n_epochs``-th epoch, predict the preview tiles and save a PNG."""

    def __init__(self, out_dir: Path, tile_ids: Sequence[str], every_n_epochs: int = 1) -> None:
        self.out_dir = Path(out_dir)
        self.tile_ids = list(tile_ids)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self._batch: dict[str, torch.Tensor] | None = None
        self.written: list[Path] = []

    def _load(self, trainer: pl.Trainer) -> dict[str, torch.Tensor] | None:
        if self._batch is None:
            dataset = getattr(trainer.datamodule, "val_dataset", None)
            if dataset is None or not self.tile_ids:
                return None
            index = {t: i for i, t in enumerate(dataset.tile_ids)}
            items = [dataset[index[t]] for t in self.tile_ids if t in index]
            if not items:
                return None
            self.tile_ids = [it["tile_id"] for it in items]
            self._batch = {
                "image": torch.stack([it["image"] for it in items]),
                "mask": torch.stack([it["mask"] for it in items]),
            }
        return self._batch

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != trainer.max_epochs:
            return
        batch = self._load(trainer)
        if batch is None:
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            probs = pl_module.predict_tiles(batch["image"].to(pl_module.device)).float().cpu().numpy()
        pl_module.train(was_training)
        dice = trainer.callback_metrics.get("val/dice")
        title = f"epoch {epoch}" + (f" — val dice {float(dice):.4f}" if dice is not None else "")
        path = self.out_dir / f"epoch={epoch:03d}.png"
        threshold = float(pl_module.config.decision_threshold)
        write_preview(
            path, batch["image"].numpy(), batch["mask"].numpy(), probs, self.tile_ids, threshold, title
        )
        self.written.append(path)
