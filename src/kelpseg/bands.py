"""The facts about a Kelp Wanted tile: band order, fill value, tile size.

Every other module imports these; nothing else hard-codes them.
"""

from __future__ import annotations

#: Band order on disk (0-based). rasterio's band index is this + 1.
BANDS: tuple[str, ...] = ("SWIR", "NIR", "R", "G", "B", "QA", "DEM")
BAND_INDEX: dict[str, int] = {name: i for i, name in enumerate(BANDS)}
#: The five reflectance bands (everything except the QA flag and the elevation).
SPECTRAL_BANDS: tuple[str, ...] = ("SWIR", "NIR", "R", "G", "B")
N_BANDS = len(BANDS)

#: Nodata marker in the raw GeoTIFFs (DEM beyond its coverage, Landsat-7 stripe gaps).
FILL_VALUE = -32768
#: Tiles are square, this many pixels a side.
TILE_SIZE = 350
#: Pixels per tile.
TILE_PIXELS = TILE_SIZE * TILE_SIZE


def band_positions(bands: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Map band name -> position in a stack ordered as ``bands``; unknown names raise ValueError."""
    unknown = [b for b in bands if b not in BAND_INDEX]
    if unknown:
        raise ValueError(f"unknown band(s) {unknown}; expected a subset of {list(BANDS)}")
    return {b: i for i, b in enumerate(bands)}
