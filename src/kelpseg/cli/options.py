"""Options shared by several commands, written once (choices come from the registries)."""

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from kelpseg.infer.choices import ENSEMBLE_MODES, MERGE_MODES, PREDICTION_BACKENDS, REFERENCE_SCORES
from kelpseg.layout import RunLayout

DataDir = Annotated[
    Path, typer.Option("--data-dir", "-d", help="Data directory (raw/, processed/, predictions/, ...).")
]
OptionalDataDir = Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data directory.")]
Workers = Annotated[int, typer.Option("--workers", "-w", help="Worker processes.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]

# ---- training ----------------------------------------------------------------------------------
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Training config YAML, or a packaged recipe name (cpu-demo, best)."),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config option: key=value (repeat).")
]
RayAddress = Annotated[
    str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address (default: embedded).")
]


def _checkpoint(value: str) -> str:
    if value in RunLayout.CHECKPOINT_NAMES or Path(value).is_file():
        return value
    raise typer.BadParameter(
        f"{value!r} is neither {' nor '.join(RunLayout.CHECKPOINT_NAMES)} nor an existing checkpoint file"
    )


# ---- inference ---------------------------------------------------------------------------------
RunDir = Annotated[Path, typer.Option("--run-dir", "-r", help="A training run directory.")]
Checkpoint = Annotated[
    str,
    typer.Option(
        metavar="[" + "|".join(RunLayout.CHECKPOINT_NAMES) + "|FILE]",
        callback=_checkpoint,
        help="The run's best or last checkpoint, or a checkpoint file.",
    ),
]
Tta = Annotated[bool, typer.Option(help="Test-time augmentation (8 flips/rotations).")]
TtaMerge = Annotated[Literal[MERGE_MODES], typer.Option(help="Merge TTA probabilities.")]  # type: ignore[valid-type]
Bf16 = Annotated[bool, typer.Option(help="bf16 autocast inference.")]
LandMask = Annotated[bool, typer.Option(help="No kelp where DEM > 0 (land).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Tiles per inference batch.")]
BandStatsFile = Annotated[
    Path | None,
    typer.Option(
        "--band-stats",
        help="Reference run dirs: its stats JSON (default: found in <data-dir>/processed/).",
    ),
]
ReferenceScore = Annotated[
    Literal[REFERENCE_SCORES],  # type: ignore[valid-type]
    typer.Option(
        help="Reference run dirs: kelp probability as sigmoid of its kelp logit (as it did) "
        "or softmax of its two logits (the fix; changes predictions)."
    ),
]
Backend = Annotated[
    Literal[PREDICTION_BACKENDS],  # type: ignore[valid-type]
    typer.Option(
        help="How the model runs: auto (ONNX Runtime on a CPU, PyTorch on a GPU), eager, "
        "channels_last, compile, onnx."
    ),
]
Threshold = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="Decision threshold (default: the run's fitted one, else 0.5)."),
]
EnsembleThreshold = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Ensemble threshold (default: the best on the runs' pooled out-of-fold validation "
        "counts from `kelpseg eval`, else the mean of their fitted thresholds, else 0.5).",
    ),
]
EnsembleMode = Annotated[
    Literal[ENSEMBLE_MODES],  # type: ignore[valid-type]
    typer.Option(help="soft: average probabilities; vote: weighted vote of hard labels."),
]
Previews = Annotated[int, typer.Option(min=0, help="Preview PNGs to write.")]
SubmissionName = Annotated[str | None, typer.Option(help="Submission folder name (default: UTC time).")]

#: The options every prediction command takes, as (parameter, annotation, default): the
#: ``inference_command`` decorator adds them and hands the command one ``InferenceOptions``.
INFERENCE_PARAMS: tuple[tuple[str, object, object], ...] = (
    ("checkpoint", Checkpoint, "best"),
    ("tta", Tta, False),
    ("tta_merge", TtaMerge, "mean"),
    ("bf16", Bf16, False),
    ("land_mask", LandMask, False),
    ("batch_size", BatchSize, 8),
    ("band_stats", BandStatsFile, None),
    ("reference_score", ReferenceScore, "sigmoid"),
    ("backend", Backend, "auto"),
)


def forwarded(values: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The options of a command (its ``locals()``) that go to the library function unchanged."""
    return {name: values[name] for name in names if name in values}


def parse_weights(weights: str | None) -> list[float] | str | None:
    """``--weights``: a comma list of numbers, or ``val``."""
    if weights is None or weights == "val":
        return weights
    try:
        return [float(w) for w in weights.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"expected a comma list of numbers or 'val', got {weights!r}", param_hint="--weights"
        ) from None
