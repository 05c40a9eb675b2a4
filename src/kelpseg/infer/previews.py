"""PNG previews of predictions: the true-colour tile with predicted kelp drawn over it.

One figure per tile, ``<out_dir>/<tile_id>_preview.png``: the true-colour composite, the same
with the predicted kelp filled in pink (and the ground-truth outline in cyan when a
ground-truth folder is given, with the tile's Dice in the title), and, for probability
predictions, the probability map. By default the tiles with the most predicted kelp are shown:
they are the ones worth checking.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kelpseg.errors import KelpsegError
from kelpseg.evaluate.evaluate import (
    format_ids,
    prediction_files,
    prediction_to_labels,
    read_prediction,
)
from kelpseg.evaluate.metrics import ConfusionCounts
from kelpseg.io.atomic import save_figure
from kelpseg.io.tiles import read_mask, read_tile
from kelpseg.layout import image_name, mask_name
from kelpseg.parallel import pmap
from kelpseg.plotting import COMPOSITES, PIXEL_HECTARES, PRED_COLOR, TRUTH_COLOR, composite, mask_overlay


def preview_figure(
    tile: np.ndarray,
    pred: np.ndarray,
    threshold: float = 0.5,
    truth: np.ndarray | None = None,
    title: str = "",
) -> Any:
    """Figure of a (7, H, W) tile with a prediction (0/1 labels or float probabilities)."""
    from matplotlib.figure import Figure

    labels = prediction_to_labels(pred, threshold)
    soft = np.issubdtype(pred.dtype, np.floating)
    rgb = composite(tile, COMPOSITES["tci"])
    n_panels = 3 if soft else 2
    fig = Figure(figsize=(4.2 * n_panels, 4.4), layout="constrained")
    axes = fig.subplots(1, n_panels)
    axes[0].imshow(rgb)
    axes[0].set_title("True colour (R,G,B)", fontsize=9)
    axes[1].imshow(rgb)
    axes[1].imshow(mask_overlay(labels, PRED_COLOR, 0.75))
    caption = f"Predicted kelp, pink ({int(labels.sum())} px = {labels.sum() * PIXEL_HECTARES:.1f} ha)"
    if truth is not None:
        if truth.any():
            axes[1].contour(truth.astype(np.float32), levels=[0.5], colors=TRUTH_COLOR, linewidths=0.8)
        dice = ConfusionCounts.from_arrays(labels, truth).scores()["dice"]
        caption += f"\ntruth outline, cyan ({int(truth.sum())} px); Dice {dice:.3f}"
    axes[1].set_title(caption, fontsize=9)
    if soft:
        im = axes[2].imshow(pred, cmap="magma", vmin=0, vmax=1)
        axes[2].set_title(f"Kelp probability (threshold {threshold:g})", fontsize=9)
        fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def most_predicted_kelp(preds: dict[str, Path], n: int, threshold: float = 0.5) -> list[str]:
    """The ``n`` tile ids with the most predicted kelp pixels (ties by id)."""
    if n <= 0:
        return []
    counts = {t: int(prediction_to_labels(read_prediction(p), threshold).sum()) for t, p in preds.items()}
    return sorted(counts, key=lambda t: (-counts[t], t))[:n]


def write_prediction_previews(
    image_dir: str | Path,
    preds_dir: str | Path,
    out_dir: str | Path,
    n: int = 10,
    tile_ids: Sequence[str] | None = None,
    gt_dir: str | Path | None = None,
    threshold: float = 0.5,
    dpi: int = 100,
    progress: bool = True,
) -> list[Path]:
    """Write a preview PNG for ``tile_ids`` (default: the ``n`` tiles with the most predicted kelp).

    Images are ``<image_dir>/<tile_id>_satellite.tif``, predictions
    ``<preds_dir>/<tile_id>_kelp.tif`` and, when ``gt_dir`` is given, masks
    ``<gt_dir>/<tile_id>_kelp.tif``. Returns the PNG paths in tile order.
    """
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    preds = prediction_files(preds_dir)
    ids = most_predicted_kelp(preds, n, threshold) if tile_ids is None else list(tile_ids)
    missing = [t for t in ids if t not in preds]
    if missing:
        raise KelpsegError(f"{preds_dir}: no prediction for tile(s) {format_ids(missing)}")
    no_image = [t for t in ids if not (image_dir / image_name(t)).exists()]
    if no_image:
        raise KelpsegError(f"{image_dir}: no image for tile(s) {format_ids(no_image)}")
    if gt_dir is not None:
        no_truth = [t for t in ids if not (Path(gt_dir) / mask_name(t)).exists()]
        if no_truth:
            raise KelpsegError(f"{gt_dir}: no ground-truth mask for tile(s) {format_ids(no_truth)}")

    def one(tid: str) -> Path:
        tile = read_tile(image_dir / image_name(tid))
        pred = read_prediction(preds[tid])
        truth = None if gt_dir is None else read_mask(Path(gt_dir) / mask_name(tid)).astype(bool)
        fig = preview_figure(tile, pred, threshold, truth, title=tid)
        return save_figure(out_dir / f"{tid}_preview.png", fig, dpi=dpi)

    # one at a time: matplotlib is not thread-safe
    return pmap(one, ids, 1, progress, "previews")
