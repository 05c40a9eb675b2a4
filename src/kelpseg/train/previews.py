"""Validation previews: one PNG per chosen epoch showing a few fixed validation tiles.

``previews/epoch=<EEE>.png`` has one row per tile and four columns: true colour (R, G, B),
colour infrared (NIR, R, G), the predicted kelp probability (with a 0-1 colour bar) and the
prediction at the decision threshold against the ground truth over true colour: true positives
green, false positives red, false negatives yellow (:mod:`kelpseg.plotting`). The tiles are
chosen once, one per area of interest where the table says (the tile with the most kelp of each
AOI, kelp-rich AOIs first), so that successive epochs can be compared and no place repeats.
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
from kelpseg.plotting import composite, hide_ticks, outcome_legend, outcome_overlay

COLUMNS = (
    "true colour (R,G,B)",
    "colour infrared (NIR,R,G)",
    "kelp probability",
    "prediction vs truth",
)


def choose_preview_tiles(frame: pd.DataFrame, n: int) -> list[str]:
    """``n`` fixed validation tile ids.

    With an ``aoi_id`` column: one tile per AOI (its tile with the most kelp, then the smallest
    id), AOIs with the most kelp first. Without one: tiles with the most kelp first (half), then
    the rest by id.
    """
    if n <= 0 or frame.empty:
        return []
    ids = frame["tile_id"].astype(str)
    kelp = frame["kelp_pixels"] if "kelp_pixels" in frame.columns else pd.Series(0, index=frame.index)
    if "aoi_id" in frame.columns and frame["aoi_id"].notna().any():
        table = pd.DataFrame({"_id": ids, "kelp": kelp, "aoi": frame["aoi_id"].astype(str)})
        table = table.sort_values(["kelp", "_id"], ascending=[False, True])
        per_aoi = table.drop_duplicates("aoi")
        chosen = per_aoi["_id"].tolist()[:n]
        rest = [t for t in table["_id"] if t not in chosen]  # fewer AOIs than n: fill up
        return chosen + rest[: n - len(chosen)]
    if "kelp_pixels" in frame.columns:
        ordered = frame.assign(_id=ids).sort_values(["kelp_pixels", "_id"], ascending=[False, True])
        with_kelp = ordered.loc[ordered["kelp_pixels"] > 0, "_id"].tolist()[: max(1, n // 2 + n % 2)]
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
    fig, axes = plt.subplots(
        n, len(COLUMNS), figsize=(2.8 * len(COLUMNS) + 0.4, 2.6 * n + 0.5), squeeze=False
    )
    for row, tile_id in enumerate(tile_ids):
        rgb = composite(raw[row], ("R", "G", "B"), positions)
        axes[row, 0].imshow(rgb, interpolation="nearest")
        axes[row, 1].imshow(composite(raw[row], ("NIR", "R", "G"), positions), interpolation="nearest")
        im = axes[row, 2].imshow(probs[row], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=axes[row, 2], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        pred, truth = probs[row] >= threshold, masks[row].astype(bool)
        axes[row, 3].imshow(rgb, interpolation="nearest")
        axes[row, 3].imshow(outcome_overlay(pred, truth), interpolation="nearest")
        tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
        axes[row, 3].set_xlabel(f"TP {tp}  FP {fp}  FN {fn} px", fontsize=7)
        axes[row, 0].set_ylabel(tile_id, fontsize=8)
    for col, name in enumerate(COLUMNS):
        label = f"{name} (threshold {threshold:g})" if col == 3 else name
        axes[0, col].set_title(label, fontsize=8)
    outcome_legend(axes[0, 3], fontsize=6)
    hide_ticks(axes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def write_preview(path: Path, *figure_args: Any) -> Path:
    """Save :func:`preview_figure` of ``figure_args`` (same order) as a PNG at ``path``."""
    from matplotlib import pyplot as plt

    fig = preview_figure(*figure_args)
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
