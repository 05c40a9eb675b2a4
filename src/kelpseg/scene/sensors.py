"""Landsat sensors and their surface-reflectance band numbers (no heavy imports: the CLI reads it)."""

from __future__ import annotations

#: Spacecraft number -> sensor name.
SENSORS: dict[int, str] = {4: "TM", 5: "TM", 7: "ETM+", 8: "OLI", 9: "OLI-2"}
#: Sensor -> SR band number for each of SPECTRAL_BANDS (SWIR, NIR, R, G, B).
BAND_NUMBERS: dict[str, tuple[int, ...]] = {
    "TM": (5, 4, 3, 2, 1),
    "ETM+": (5, 4, 3, 2, 1),
    "OLI": (6, 5, 4, 3, 2),
    "OLI-2": (6, 5, 4, 3, 2),
}
#: Sensor names, oldest first.
SENSOR_NAMES: tuple[str, ...] = tuple(BAND_NUMBERS)
