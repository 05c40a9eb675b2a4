"""How the model of a run is executed during prediction: eager PyTorch, channels-last, torch.compile,
or an exported ONNX model under ONNX Runtime.

Every backend is a callable ``normalised batch (N, C, H, W) float32 -> kelp logits (N, 1, H, W)``
on the batch's device, so TTA, unpadding, land masking and writing do not change with it.

``auto`` (the default) picks the fastest backend that stays within :data:`PROBABILITY_TOLERANCE`
of fp32 eager PyTorch (``docs/performance.md`` has the measurements): ONNX Runtime on a CPU, when
``onnxruntime`` is installed and bf16 was not asked for; eager PyTorch otherwise (on a GPU the
model runs in PyTorch, with bf16 autocast if asked for).

ONNX artefact: ``kelpseg export`` writes ``<run>/export/model.onnx`` and ``export.json`` (the
checkpoint's sha256, the input shape, the largest probability difference to eager measured at
export). Prediction uses that file when its checkpoint hash matches the checkpoint being used;
otherwise it exports the model in memory first (a few seconds, once per prediction call).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kelpseg.errors import KelpsegError
from kelpseg.infer.choices import PREDICTION_BACKENDS
from kelpseg.io.atomic import atomic_path, write_json

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = PREDICTION_BACKENDS
#: Largest accepted difference of a fast backend's probabilities to fp32 eager PyTorch.
PROBABILITY_TOLERANCE = 1e-3
EXPORT_DIR = "export"
ONNX_FILE = "model.onnx"
EXPORT_INFO_FILE = "export.json"
ONNX_OPSET = 17

Runner = Callable[[torch.Tensor], torch.Tensor]


class EngineError(KelpsegError):
    """A prediction backend cannot be used (missing package, stale or unreadable artefact)."""


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device, bf16: bool) -> str:
    """The backend ``auto`` stands for on ``device``; other names are checked and returned."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown prediction backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        return "onnx" if device.type == "cpu" and not bf16 and onnxruntime_available() else "eager"
    if backend == "onnx":
        if device.type != "cpu":
            raise EngineError("the onnx backend runs on the CPU only; use --backend eager on a GPU")
        if bf16:
            raise EngineError("bf16 autocast applies to PyTorch backends only, not to onnx")
        if not onnxruntime_available():
            raise EngineError("the onnx backend needs onnxruntime: pip install onnxruntime onnx")
    return backend


# ---- export --------------------------------------------------------------------------------------
def export_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / EXPORT_DIR


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as an ONNX graph with dynamic batch, height and width."""
    buffer = io.BytesIO()
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


class OnnxRunner:
    """An ONNX model under ONNX Runtime's CPU provider, called like the PyTorch model."""

    def __init__(self, model: bytes | str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # no busy-waiting threads: the DataLoader's readers and writers share the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            where = "" if isinstance(model, bytes) else f"{model}: "
            raise EngineError(f"{where}cannot load the ONNX model ({exc})") from None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run(None, {"x": array})
        return torch.from_numpy(logits)


def _example_input(in_channels: int, size: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, in_channels, size, size, generator=torch.Generator().manual_seed(0))


def max_probability_difference(model: nn.Module, runner: Runner, example: torch.Tensor) -> float:
    """Largest |sigmoid(runner(x)) - sigmoid(model(x))| over ``example`` (model in fp32 eager)."""
    with torch.inference_mode():
        ref = torch.sigmoid(model.eval()(example).float())
        got = torch.sigmoid(runner(example).float())
    return float((got - ref).abs().max())


@dataclass(frozen=True)
class ExportResult:
    path: Path
    info: dict[str, Any]


def export_onnx(run: Any) -> ExportResult:
    """Write ``<run>/export/model.onnx`` and ``export.json`` for a loaded run; checks the graph first.

    The exported model is compared with eager PyTorch on a random batch of two; a difference above
    :data:`PROBABILITY_TOLERANCE` is an error and nothing is written.
    """
    model = run.model.to("cpu").eval()
    size, channels = int(run.config.image_size), len(run.transform.channel_names)
    example = _example_input(channels, size, batch=2)
    data = _onnx_bytes(model, example[:1])
    diff = max_probability_difference(model, OnnxRunner(data), example)
    if diff > PROBABILITY_TOLERANCE:
        raise EngineError(
            f"{run.run_dir}: the exported ONNX model differs from PyTorch by {diff:.2e} in probability "
            f"(tolerance {PROBABILITY_TOLERANCE}); not written"
        )
    folder = export_dir(run.run_dir)
    path = folder / ONNX_FILE
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    info = {
        "format": "onnx",
        "file": ONNX_FILE,
        "opset": ONNX_OPSET,
        "checkpoint": str(run.checkpoint),
        "checkpoint_sha256": checkpoint_sha256(run),
        "input": {"name": "x", "channels": channels, "size": size, "dynamic": ["n", "h", "w"]},
        "output": {"name": "logits", "what": "kelp logits (N, 1, H, W); sigmoid gives probabilities"},
        "max_probability_difference": diff,
        "tolerance": PROBABILITY_TOLERANCE,
        "torch": torch.__version__,
    }
    write_json(folder / EXPORT_INFO_FILE, info)
    return ExportResult(path, info)


def exported_onnx(run_dir: str | Path, checkpoint_sha256: str) -> Path | None:
    """The run's exported ONNX file if it was made from this checkpoint, else None."""
    folder = export_dir(run_dir)
    info_path, path = folder / EXPORT_INFO_FILE, folder / ONNX_FILE
    if not (info_path.is_file() and path.is_file()):
        return None
    try:
        info = json.loads(info_path.read_text())
    except ValueError as exc:
        raise EngineError(f"{info_path}: unreadable export record ({exc})") from None
    if info.get("checkpoint_sha256") != checkpoint_sha256:
        log.info("%s: exported for another checkpoint; exporting again in memory", path)
        return None
    return path


# ---- building a runner ---------------------------------------------------------------------------
class _LazyOnnxRunner:
    """Exports ``model`` in memory on the first call, traced on the first sample of that batch."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.runner: OnnxRunner | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.runner is None:
            self.runner = OnnxRunner(
                _onnx_bytes(self.model.to("cpu"), x[:1].detach().to("cpu", torch.float32))
            )
        return self.runner(x)


def checkpoint_sha256(run: Any) -> str | None:
    """sha256 of the run's checkpoint file, None when the run has none on disk."""
    from kelpseg.train.datamodule import file_sha256

    path = getattr(run, "checkpoint", None)
    return file_sha256(Path(path)) if path is not None and Path(path).is_file() else None


def build_runner(run: Any, backend: str, device: torch.device) -> Runner:
    """The callable that maps a normalised batch to logits with ``backend`` (already resolved)."""
    model = run.model.to(device).eval()
    if backend == "eager":  # the reference: plain NCHW weights, whatever layout training used
        return model.to(memory_format=torch.contiguous_format)
    if backend == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        return lambda x: model(x.contiguous(memory_format=torch.channels_last))
    if backend == "compile":
        return torch.compile(model, dynamic=False)
    if backend == "onnx":
        sha = checkpoint_sha256(run)
        run_dir = getattr(run, "run_dir", None)
        path = exported_onnx(run_dir, sha) if sha and run_dir is not None else None
        return OnnxRunner(path) if path is not None else _LazyOnnxRunner(model)
    raise EngineError(f"unknown prediction backend {backend!r}; choose from {', '.join(BACKENDS)}")
