"""Scene quick-look: the true-colour stretch ignores clouds; the PNG has every panel."""

from __future__ import annotations

import numpy as np
import rasterio

from kelpseg.bands import BAND_INDEX, FILL_VALUE
from kelpseg.scene.outputs import NODATA
from kelpseg.scene.preview import true_colour, write_scene_preview
from kelpseg.scene.synthetic import write_synthetic_scene


def test_true_colour_stretch_leaves_clouds_out_and_fill_white() -> None:
    rng = np.random.default_rng(0)
    stack = np.zeros((7, 40, 40), dtype=np.int32)
    water = rng.integers(7000, 8000, size=(40, 40))  # dark, with some texture
    for band in ("R", "G", "B", "NIR", "SWIR"):
        stack[BAND_INDEX[band]] = water
    cloudy = np.zeros((40, 40), dtype=bool)
    cloudy[:, 20:] = True  # half the scene under a bright cloud
    for band in ("R", "G", "B", "NIR", "SWIR"):
        stack[BAND_INDEX[band]][cloudy] = 40000
    stack[BAND_INDEX["QA"]][cloudy] = 1
    stack[:5, :3, :3] = FILL_VALUE
    rgb = true_colour(stack)
    clear = ~cloudy
    clear[:3, :3] = False
    # Stretched over the water alone, the water spans most of the display range (were the cloud
    # part of the stretch, all water would sit near 0).
    assert rgb[clear].max() - rgb[clear].min() > 0.8
    assert np.all(rgb[:3, :3] == 1.0)


def test_scene_preview_writes_a_png(tmp_path) -> None:
    scene = write_synthetic_scene(tmp_path / "scenes", 200, 180, seed=1, cloud_fraction=0.2)
    with rasterio.open(scene.truth) as src:
        truth, profile = src.read(1), src.profile
    prob = np.where(truth == NODATA, NODATA, truth * 100).astype(np.uint8)
    for name, data in (("prob.tif", prob), ("mask.tif", truth)):
        with rasterio.open(tmp_path / name, "w", **profile) as dst:
            dst.write(data, 1)
    out = write_scene_preview(
        scene.folder, tmp_path / "prob.tif", tmp_path / "mask.tif", tmp_path / "q.png", truth=scene.truth
    )
    from PIL import Image

    with Image.open(out) as img:
        width, height = img.size
    assert width > 3 * height  # four panels side by side
