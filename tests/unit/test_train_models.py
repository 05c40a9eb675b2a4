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
from kelpseg.train.module import model_from_config

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
    model = model_from_config(load_config(None, [*TINY, f"architecture={arch}"]), in_channels=4)
    out = model(torch.randn(2, 4, size, size))
    assert out.shape == (2, 1, size, size)
    assert torch.isfinite(out).all()


def test_dpt_with_a_vit_encoder() -> None:
    config = load_config(None, ["architecture=dpt", "encoder=tu-vit_tiny_patch16_224"])
    model = model_from_config(config, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1, 224, 224)


def test_unet_depth_follows_decoder_channels_and_in_channels() -> None:
    config = _config("decoder_channels=32,16,16", "decoder_attention_type=scse")
    model = model_from_config(config, in_channels=9)
    assert len(model.decoder.blocks) == 3
    assert model.encoder.conv1.in_channels == 9
    assert model(torch.randn(1, 9, 32, 32)).shape == (1, 1, 32, 32)
    assert model_from_config(config).encoder.conv1.in_channels == config.in_channels


def test_timm_encoder_without_pretrained_weights_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(
        None, ["encoder=tu-efficientnet_b0_g8_gn", "encoder_weights=imagenet", "decoder_channels=16,8,4"]
    )
    with caplog.at_level(logging.WARNING):
        model = model_from_config(config, in_channels=3)
    assert "no pretrained weights for tu-efficientnet_b0_g8_gn" in caplog.text
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


# ---- local weights files ---------------------------------------------------------------------------
def _reference(in_channels: int = 5) -> torch.nn.Module:
    torch.manual_seed(1)
    return model_from_config(_config("decoder_channels=16,8,4"), in_channels=in_channels)


def _with_weights(path: Path, in_channels: int = 5) -> torch.nn.Module:
    torch.manual_seed(2)
    return model_from_config(
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
    partial = {k: v for k, v in rgb.items() if not k.startswith("layer2")}
    path = tmp_path / "rgb.pth"
    torch.save(partial, path)
    with caplog.at_level(logging.INFO):
        model = _with_weights(path, in_channels=5)
    weight = model.encoder.conv1.weight.detach()
    src = rgb["conv1.weight"]
    expected = torch.stack([src[:, i % 3] for i in range(5)], dim=1) * (3 / 5)
    torch.testing.assert_close(weight, expected)
    assert "first conv adapted to ['conv1.weight']" in caplog.text
    assert "keep their random init: layer2" in caplog.text


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


def test_shallow_decoders_drop_the_unused_encoder_stages() -> None:
    """The stages below a 3-stage decoder are removed, not carried: every parameter left is used."""
    shallow = model_from_config(_config("decoder_channels=16,8,4"), in_channels=3)
    assert not any(n.split(".")[1] in ("layer3", "layer4") for n, _ in shallow.state_dict().items())
    assert isinstance(shallow.encoder.layer3, torch.nn.Identity)
    assert all(p.requires_grad for p in shallow.parameters())
    shallow(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in shallow.parameters())
    full = model_from_config(_config(), in_channels=3)
    assert all(p.requires_grad for p in full.parameters())
    assert full.encoder.layer4.__class__.__name__ == "Sequential"


def test_cpu_demo_model_holds_only_the_parameters_it_uses() -> None:
    """Counted independently: smp's model of the recipe, parameters reached by a backward pass."""
    import segmentation_models_pytorch as smp

    from kelpseg.recipes import train_recipe
    from kelpseg.train.models import count_parameters

    config = load_config(train_recipe("cpu-demo"))
    model = model_from_config(config)
    reference = smp.Unet(
        config.encoder,
        encoder_weights=None,
        in_channels=config.in_channels,
        classes=1,
        encoder_depth=len(config.decoder_channels),
        decoder_channels=config.decoder_channels,
    ).eval()
    reference(torch.zeros(1, config.in_channels, 64, 64)).sum().backward()
    used = sum(p.numel() for p in reference.parameters() if p.grad is not None)
    carried = sum(p.numel() for p in reference.parameters())
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) == used
    assert carried - used > 10_000_000  # what smp alone keeps for resnet18 cut to 3 stages
    model.load_state_dict(
        {k: v for k, v in reference.state_dict().items() if k in model.state_dict()}, strict=True
    )
    model.eval()
    x = torch.randn(1, config.in_channels, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))  # the same stages, the same output


def test_checkpoint_with_the_unused_stages_still_loads(tmp_path: Path) -> None:
    from kelpseg.train.module import KelpSegmentationModule

    config = _config(
        "decoder_channels=16,8,4",
        "bands=R,G,B",
        "spectral_indices=[]",
        "mask_using_qa=false",
        "mask_using_water_mask=false",
    )
    stats = {c: {"min": 0.0, "max": 1.0, "mean": 0.5, "std": 0.1, "q01": 0.0, "q99": 1.0} for c in "RGB"}
    module = KelpSegmentationModule(config, stats)
    old = dict(module.state_dict())
    import segmentation_models_pytorch as smp

    full = smp.Unet(
        "resnet18",
        encoder_weights=None,
        in_channels=3,
        classes=1,
        encoder_depth=3,
        decoder_channels=[16, 8, 4],
    )
    extra = {f"model.{k}": v for k, v in full.state_dict().items() if k.startswith("encoder.layer4")}
    checkpoint = {"state_dict": {**old, **extra}}
    module.on_load_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(old)


def test_factory_takes_explicit_arguments() -> None:
    model = create_model("unet", "resnet18", 4, decoder_channels=[16, 8, 8])
    assert model(torch.zeros(1, 4, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ModelConfigError, match="unknown architecture 'nope'"):
        create_model("nope", "resnet18", 4)
    assert isinstance(ModelConfigError("x"), ValueError)


def test_output_bias_prior_starts_every_pixel_at_the_prior() -> None:
    def model(prior: float | None) -> torch.nn.Module:
        config = TrainConfig(
            encoder="resnet18", decoder_channels=[32, 16, 16], output_bias_prior=prior, mlflow=False
        )
        torch.manual_seed(0)
        return model_from_config(config, 12).eval()

    x = torch.randn(2, 12, 64, 64)
    plain, primed = model(None), model(0.01)
    with torch.no_grad():
        shift = primed(x) - plain(x)  # same seed, same weights: only the head's bias differs
    assert torch.allclose(shift, torch.full_like(shift, math.log(0.01 / 0.99)), atol=1e-4)
    assert float(primed.segmentation_head[0].bias) == pytest.approx(math.log(0.01 / 0.99))
    with pytest.raises(ValueError, match="output_bias_prior"):
        TrainConfig(output_bias_prior=1.0)
