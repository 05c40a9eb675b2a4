"""Whole Landsat scenes (:mod:`kelpseg.scene`): map one scene, a series, or write synthetic scenes."""

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from kelpseg.cli.app import app, console, err_console
from kelpseg.cli.options import EnsembleThreshold, Quiet, RayAddress, Workers, parse_weights
from kelpseg.cli.predict import bundled_options, inference_command
from kelpseg.scene.sensors import SENSOR_NAMES

SceneRuns = Annotated[
    list[Path], typer.Option("--run-dir", "-r", help="Run dir; repeat for a fold ensemble.")
]
SceneOut = Annotated[
    Path, typer.Option("--output-dir", "-o", help="Where the maps, polygons and summary go.")
]
SynthOut = Annotated[Path, typer.Option("--output-dir", "-o", help="Folder the scene folders go into.")]
SensorName = Literal[SENSOR_NAMES]  # type: ignore[valid-type]
Window = Annotated[int | None, typer.Option(help="Window size in px (default 350; larger: multiples of 32).")]
Overlap = Annotated[float, typer.Option(help="Window overlap as a fraction (Hann-blended).")]
QaBits = Annotated[
    str, typer.Option(help="QA_PIXEL bits that mark a pixel cloudy (names or numbers, comma list).")
]
DemOpt = Annotated[Path | None, typer.Option(help="DEM raster (any CRS/resolution), reprojected per window.")]
AoiOpt = Annotated[Path | None, typer.Option(help="Area of interest (GeoPackage / GeoJSON polygons).")]
SkipLand = Annotated[bool, typer.Option(help="With a DEM: do not run the model on all-land windows.")]
Mmu = Annotated[int, typer.Option("--min-mapping-unit", help="Smallest kelp polygon kept, in pixels.")]
SceneWeights = Annotated[str | None, typer.Option(help="Ensemble weights: comma list or 'val'.")]

SCENE_PARAMS: tuple[tuple[str, object, object], ...] = (
    ("window", Window, None),
    ("overlap", Overlap, 0.5),
    ("qa_bits", QaBits, "cloud,dilated_cloud,shadow,cirrus"),
    ("dem", DemOpt, None),
    ("aoi", AoiOpt, None),
    ("skip_land", SkipLand, True),
    ("min_mapping_unit", Mmu, 2),
    ("weights", SceneWeights, None),
    ("threshold", EnsembleThreshold, None),
)


def _scene_options(picked: dict[str, Any], others: dict[str, Any]) -> Any:
    from kelpseg.scene.mapping import SceneOptions

    return SceneOptions(
        window_size=picked["window"],
        overlap=picked["overlap"],
        qa_bits=[b.strip() for b in picked["qa_bits"].split(",") if b.strip()],
        dem=picked["dem"],
        aoi=picked["aoi"],
        skip_land=picked["skip_land"],
        min_mapping_unit=picked["min_mapping_unit"],
        weights=parse_weights(picked["weights"]),
        threshold=picked["threshold"],
        inference=others.pop("options"),
    )


#: The scene options (window, overlap, QA bits, DEM, AOI, ...) as one ``scene_options``; the
#: command also gets the inference options (``inference_command`` goes above this decorator).
scene_command = bundled_options(SCENE_PARAMS, _scene_options, "scene_options")


@app.command("scene")
@inference_command
@scene_command
def scene_cmd(
    scene_options: Any,
    scene: Annotated[Path, typer.Argument(help="C2 L2 scene folder, .tar, MTL file, or 7-band GeoTIFF.")],
    run_dir: SceneRuns,
    output_dir: SceneOut,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Map a whole Landsat scene: probability and kelp COGs, kelp polygons, area summary."""
    from kelpseg.scene.mapping import map_scene

    if scene_options.dem is None:
        err_console.print("no --dem: the DEM band is nodata (-32768) everywhere", highlight=False)
    res = map_scene(scene, run_dir, output_dir, scene_options)
    s = res.summary
    console.print(
        f"[green]{res.scene_id}[/] kelp {s['kelp_ha']} ha ({s['n_polygons']} polygons), observed "
        f"{s['observed_clear_ha']} ha, cloud {s['cloud_masked_ha']} ha; {res.n_windows} windows "
        f"({res.n_skipped} skipped) in {res.seconds:.1f} s -> {output_dir}"
    )


@app.command("scene-series")
@inference_command
@scene_command
def scene_series_cmd(
    scene_options: Any,
    scenes: Annotated[Path, typer.Argument(help="Folder of scenes (C2 L2 folders, .tar, 7-band .tif).")],
    run_dir: SceneRuns,
    output_dir: SceneOut,
    ray: Annotated[bool, typer.Option(help="One Ray task per scene.")] = False,
    ray_address: RayAddress = None,
    workers: Workers = 2,
    quiet: Quiet = False,
) -> None:
    """Map every scene of a folder: one CSV row per scene (and AOI polygon) and a plot."""
    from kelpseg.scene.timeseries import map_series

    csv_path, png, rows = map_series(
        scenes, run_dir, output_dir, scene_options, ray=ray, ray_address=ray_address
    )
    console.print(f"[green]time series[/] {csv_path} ({len(rows)} rows), plot {png}")


@app.command("synth-scene")
def synth_scene_cmd(
    output_dir: SynthOut,
    size: Annotated[int, typer.Option(help="Scene height and width in pixels.")] = 2000,
    dates: Annotated[
        str, typer.Option(help="Comma list of acquisition dates (one scene each).")
    ] = "2020-07-15",
    sensor: Annotated[SensorName, typer.Option(help="Landsat sensor (its band file names).")] = "OLI",
    seed: Annotated[int, typer.Option(help="Coast and kelp beds (same seed: same site).")] = 0,
    cloud_fraction: Annotated[float, typer.Option(help="Cloudy share of each scene.")] = 0.1,
) -> None:
    """Write synthetic Landsat C2 L2 scene folders (with true kelp mask and DEM) for demos and tests."""
    import math

    from kelpseg.scene.synthetic import write_synthetic_scene

    for k, date in enumerate(d.strip() for d in dates.split(",") if d.strip()):
        vigour = 0.5 + 0.5 * abs(math.sin(1.3 * k + seed)) if k else 1.0  # canopy varies by date
        sc = write_synthetic_scene(
            output_dir,
            size,
            size,
            seed=seed,
            date=date,
            sensor=sensor,
            cloud_fraction=cloud_fraction,
            kelp_vigour=vigour,
        )
        console.print(f"[green]scene[/] {sc.folder} ({sc.kelp_pixels} true kelp px)")
