"""Model factory: every smp architecture gives one output channel; local encoder weights load offline."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from kelpseg.train.config import TrainConfig, load_config
from kelpseg.train.models import (
    ModelConfigError,
    architecture_registry,
    create_model,
    get_architecture,
    resolve_architecture,
)

SMALL = ["encoder=resnet18", "decoder_channels=16,16,8,8,8"]
TINY = ["encoder=tu-resnet10t", "decoder_channels=16,16,8,8,8"]


def _config(*overrides: str) -> TrainConfig:
    return load_config(None, [*SMALL, *overrides])


def test_registry_holds_every_smp_architecture_and_aliases() -> None:
    import segmentation_models_pytorch as smp

    assert set(architecture_registry()) == set(smp.MODEL_ARCHITECTURES_MAPPING)
    assert resolve_architecture("UNet++") == "unetplusplus"
    assert resolve_architecture("DeepLabV3+") == "deeplabv3plus"
    with pytest.raises(ModelConfigError, match="unknown architecture 'foo'; choose one of unet"):
        resolve_architecture("foo")


def test_options_go_only_to_architectures_that_accept_them() -> None:
    unet = get_architecture("unet").kwargs([32, 16, 8], "scse")
    assert unet == {"decoder_channels": [32, 16, 8], "encoder_depth": 3, "decoder_attention_type": "scse"}
    manet = get_architecture("manet").kwargs([32, 16, 8], "scse")
    assert manet == {"decoder_channels": [32, 16, 8], "encoder_depth": 3}
    for name in ("deeplabv3", "fpn", "linknet", "pan", "upernet", "segformer"):
        assert get_architecture(name).kwargs([32, 16, 8], "scse") == {}
    assert get_architecture("pspnet").encoder_depth([1, 2]) == 3  # smp's own default


@pytest.mark.parametrize("arch", sorted(a for a in architecture_registry() if a != "dpt"))
def test_every_architecture_gives_one_logit_per_pixel(arch: str) -> None:
    size = 128 if arch == "pan" else 64  # PAN pools its deepest features 8x further
    model = create_model(load_config(None, [*TINY, f"architecture={arch}"]), in_channels=4)
    out = model(torch.randn(2, 4, size, size))
    assert out.shape == (2, 1, size, size)
    assert torch.isfinite(out).all()


def test_dpt_with_a_vit_encoder() -> None:
    config = load_config(None, ["architecture=dpt", "encoder=tu-vit_tiny_patch16_224"])
    model = create_model(config, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1, 224, 224)


def test_unet_depth_follows_decoder_channels_and_in_channels() -> None:
    config = _config("decoder_channels=32,16,16", "decoder_attention_type=scse")
    model = create_model(config, in_channels=9)
    assert len(model.decoder.blocks) == 3
    assert model.encoder.conv1.in_channels == 9
    assert model(torch.randn(1, 9, 32, 32)).shape == (1, 1, 32, 32)
    assert create_model(config).encoder.conv1.in_channels == config.in_channels


def test_timm_encoder_without_pretrained_weights_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(
        None, ["encoder=tu-efficientnet_b0_g8_gn", "encoder_weights=imagenet", "decoder_channels=16,8,4"]
    )
    with caplog.at_level(logging.WARNING):
        model = create_model(config, in_channels=3)
    assert "no pretrained weights for tu-efficientnet_b0_g8_gn" in caplog.text
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


# ---- local weights files ---------------------------------------------------------------------------
def _reference(in_channels: int = 5) -> torch.nn.Module:
    torch.manual_seed(1)
    return create_model(_config("decoder_channels=16,8,4"), in_channels=in_channels)


def _with_weights(path: Path, in_channels: int = 5) -> torch.nn.Module:
    torch.manual_seed(2)
    return create_model(
        _config("decoder_channels=16,8,4", f"encoder_weights={path}"), in_channels=in_channels
    )


def _same_encoder(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.encoder.state_dict(), b.encoder.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("form", ["encoder", "model", "lightning", "safetensors"])
def test_local_weights_file_loads_into_the_encoder(tmp_path: Path, form: str) -> None:
    ref = _reference()
    if form == "encoder":
        path = tmp_path / "encoder.pth"
        torch.save(ref.encoder.state_dict(), path)
    elif form == "model":
        path = tmp_path / "model.pt"
        torch.save(ref.state_dict(), path)
    elif form == "lightning":
        path = tmp_path / "run.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "encoder.safetensors"
        save_file({k: v.contiguous() for k, v in ref.encoder.state_dict().items()}, str(path))
    model = _with_weights(path)  # seeded differently from the reference: equal only if loaded
    assert _same_encoder(model, ref)


def test_rgb_weights_are_adapted_to_more_channels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rgb = _reference(in_channels=3).encoder.state_dict()
    partial = {k: v for k, v in rgb.items() if not k.startswith("layer4")}
    path = tmp_path / "rgb.pth"
    torch.save(partial, path)
    with caplog.at_level(logging.INFO):
        model = _with_weights(path, in_channels=5)
    weight = model.encoder.conv1.weight.detach()
    src = rgb["conv1.weight"]
    expected = torch.stack([src[:, i % 3] for i in range(5)], dim=1) * (3 / 5)
    torch.testing.assert_close(weight, expected)
    assert "first conv adapted to ['conv1.weight']" in caplog.text
    assert "keep their random init: layer4" in caplog.text


def test_unusable_weights_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"missing\.pth: encoder weights file not found"):
        _with_weights(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    torch.save({"foo.bar": torch.zeros(3)}, junk)
    with pytest.raises(ModelConfigError, match="no tensor matches the encoder's parameters"):
        _with_weights(junk)
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ModelConfigError, match="cannot read encoder weights"):
        _with_weights(text)
    bad_shape = tmp_path / "shape.pth"
    torch.save({"bn1.weight": torch.zeros(7)}, bad_shape)
    with pytest.raises(ModelConfigError, match=r"bn1.weight has shape \(7,\), the encoder expects \(64,\)"):
        _with_weights(bad_shape)


def test_shallow_decoders_freeze_the_unused_encoder_stages() -> None:
    """DDP refuses trainable parameters that never reach the loss; they are frozen instead."""
    shallow = create_model(_config("decoder_channels=16,8,4"), in_channels=3)
    frozen = {n.split(".")[1] for n, p in shallow.named_parameters() if not p.requires_grad}
    assert frozen == {"layer3", "layer4"}
    shallow(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in shallow.parameters() if p.requires_grad)
    assert all(p.grad is None for p in shallow.parameters() if not p.requires_grad)
    full = create_model(_config(), in_channels=3)
    assert all(p.requires_grad for p in full.parameters())


def test_output_bias_prior_starts_every_pixel_at_the_prior() -> None:
    def model(prior: float | None) -> torch.nn.Module:
        config = TrainConfig(
            encoder="resnet18", decoder_channels=[32, 16, 16], output_bias_prior=prior, mlflow=False
        )
        torch.manual_seed(0)
        return create_model(config, 12).eval()

    x = torch.randn(2, 12, 64, 64)
    plain, primed = model(None), model(0.01)
    with torch.no_grad():
        shift = primed(x) - plain(x)  # same seed, same weights: only the head's bias differs
    assert torch.allclose(shift, torch.full_like(shift, math.log(0.01 / 0.99)), atol=1e-4)
    assert float(primed.segmentation_head[0].bias) == pytest.approx(math.log(0.01 / 0.99))
    with pytest.raises(ValueError, match="output_bias_prior"):
        TrainConfig(output_bias_prior=1.0)
