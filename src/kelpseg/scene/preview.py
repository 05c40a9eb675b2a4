"""A quick-look PNG of a mapped scene: true colour, the kelp probability, and the kelp mask.

Read at reduced resolution (``max_px`` a side, through the COG overviews), so it is cheap for a
full 8,000² scene. With ``truth`` (a 0/1 raster on the same grid, as the synthetic scenes write)
a fourth panel shows the true kelp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from kelpseg.bands import FILL_VALUE
from kelpseg.io.atomic import save_figure
from kelpseg.plotting import cloud_mask, composite
from kelpseg.scene.c2l2 import open_scene
from kelpseg.scene.outputs import NODATA, PROB_SCALE


def _read_small(path: str | Path, shape: tuple[int, int], nearest: bool = True) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1, out_shape=shape, resampling=Resampling.nearest if nearest else Resampling.average)


def true_colour(stack: np.ndarray) -> np.ndarray:
    """(H, W, 3) display image of a (7, H, W) stack in the competition band order.

    The same per-band 2-98 % stretch as the tile plots, with clouds left out of it (otherwise bright
    clouds set the range and water and land show black); outside the footprint white.
    """
    rgb = composite(stack, ("R", "G", "B"), exclude=cloud_mask(stack))
    rgb[np.any(stack[:5] == FILL_VALUE, axis=0)] = 1.0
    return rgb


def write_scene_preview(
    scene: str | Path,
    probability: str | Path,
    mask: str | Path,
    target: str | Path,
    truth: str | Path | None = None,
    max_px: int = 900,
    crop: tuple[int, int, int, int] | None = None,
) -> Path:
    """PNG with panels true colour | probability | mask (| truth). ``crop``: (row, col, h, w) of the scene."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = open_scene(scene)
    row, col, h, w = crop or (0, 0, source.height, source.width)
    step = max(1, int(np.ceil(max(h, w) / max_px)))
    with source.open() as reader:
        px = reader.read(row, col, h, w)
    rgb = true_colour(px.stack[:, ::step, ::step])
    with rasterio.open(mask) as src:
        full = src.height, src.width
    layers = {}
    for name, path in (("probability", probability), ("mask", mask), ("truth", truth)):
        if path is None:
            continue
        with rasterio.open(path) as src:
            data = src.read(1, window=rasterio.windows.Window(col, row, w, h))[::step, ::step]
        layers[name] = np.ma.masked_equal(data, NODATA)
    assert full[0] >= row + h and full[1] >= col + w
    n = 1 + len(layers)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), dpi=110)
    axes[0].imshow(rgb)
    axes[0].set_title(f"{source.meta.sensor} {source.meta.date} true colour", fontsize=9)
    for ax, (name, data) in zip(axes[1:], layers.items(), strict=True):
        if name == "probability":
            shown = ax.imshow(data / PROB_SCALE, cmap="viridis", vmin=0, vmax=1)
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            ax.set_title("kelp probability", fontsize=9)
        else:
            ax.imshow(rgb * 0.55)
            kelp = np.ma.masked_not_equal(data, 1)
            ax.imshow(kelp, cmap="autumn", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title("predicted kelp" if name == "mask" else "true kelp", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(source.meta.scene_id, fontsize=9)
    fig.tight_layout()
    out = save_figure(target, fig)
    plt.close(fig)
    return out
