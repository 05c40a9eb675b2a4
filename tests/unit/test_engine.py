"""Prediction backends: fast paths equal fp32 eager within tolerance; the ONNX export and its reuse."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from kelpseg.infer.engine import (
    EXPORT_INFO_FILE,
    PROBABILITY_TOLERANCE,
    EngineError,
    OnnxRunner,
    build_runner,
    export_dir,
    export_onnx,
    exported_onnx,
    resolve_backend,
)

CHANNELS, SIZE = 5, 64
CPU = torch.device("cpu")


def small_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = smp.Unet(
        "resnet18",
        encoder_weights=None,
        in_channels=CHANNELS,
        classes=1,
        encoder_depth=3,
        decoder_channels=(32, 16, 8),
    )
    # non-trivial batch-norm statistics, as in a trained model
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def fake_run(tmp_path: Path, model: torch.nn.Module) -> SimpleNamespace:
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ckpt)
    return SimpleNamespace(
        model=model,
        transform=SimpleNamespace(channel_names=[f"c{i}" for i in range(CHANNELS)]),
        config=SimpleNamespace(image_size=SIZE),
        run_dir=tmp_path,
        checkpoint=ckpt,
    )


def batch(n: int = 3, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, CHANNELS, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", ["channels_last", "onnx"])
def test_fast_backend_probabilities_equal_eager(tmp_path: Path, backend: str) -> None:
    model = small_unet()
    x = batch()
    with torch.inference_mode():
        ref = torch.sigmoid(model(x))
        runner = build_runner(fake_run(tmp_path, model), backend, CPU)
        got = torch.sigmoid(runner(x).float())
        # a second call with another batch size reuses the same graph
        got_one = torch.sigmoid(runner(x[:1]).float())
    assert got.shape == ref.shape == (3, 1, SIZE, SIZE)
    diff = float((got - ref).abs().max())
    assert diff <= PROBABILITY_TOLERANCE
    torch.testing.assert_close(got_one, got[:1], atol=PROBABILITY_TOLERANCE, rtol=0)
    assert float(ref.std()) > 0.01  # the comparison is not between two constants


def test_export_writes_artefact_that_prediction_reuses(tmp_path: Path) -> None:
    model = small_unet()
    run = fake_run(tmp_path, model)
    result = export_onnx(run)
    assert result.path == export_dir(tmp_path) / "model.onnx" and result.path.stat().st_size > 100_000
    info = json.loads((export_dir(tmp_path) / EXPORT_INFO_FILE).read_text())
    assert info["input"] == {"name": "x", "channels": CHANNELS, "size": SIZE, "dynamic": ["n", "h", "w"]}
    assert 0 <= info["max_probability_difference"] <= PROBABILITY_TOLERANCE
    # the saved file is what the onnx backend loads, and it gives the model's probabilities
    x = batch(2, size=96)  # other sizes than the export's: the graph's axes are dynamic
    runner = build_runner(run, "onnx", CPU)
    assert isinstance(runner, OnnxRunner)
    with torch.inference_mode():
        np.testing.assert_allclose(
            torch.sigmoid(runner(x)).numpy(), torch.sigmoid(model(x)).numpy(), atol=PROBABILITY_TOLERANCE
        )
    # a new checkpoint makes the export stale: not used any more
    assert exported_onnx(tmp_path, info["checkpoint_sha256"]) == result.path
    torch.save({"other": torch.zeros(1)}, run.checkpoint)
    assert not isinstance(build_runner(run, "onnx", CPU), OnnxRunner)


def test_resolve_backend() -> None:
    assert resolve_backend("auto", CPU, bf16=False) == "onnx"
    assert resolve_backend("auto", CPU, bf16=True) == "eager"
    assert resolve_backend("auto", torch.device("cuda"), bf16=False) == "eager"
    assert resolve_backend("channels_last", CPU, bf16=True) == "channels_last"
    with pytest.raises(EngineError, match="unknown prediction backend 'fast'"):
        resolve_backend("fast", CPU, bf16=False)
    with pytest.raises(EngineError, match="bf16 autocast applies to PyTorch backends only"):
        resolve_backend("onnx", CPU, bf16=True)
    with pytest.raises(EngineError, match="CPU only"):
        resolve_backend("onnx", torch.device("cuda"), bf16=False)


def test_unreadable_onnx_file_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EngineError, match=r"model\.onnx: cannot load the ONNX model"):
        OnnxRunner(bad)
