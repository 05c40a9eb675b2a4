"""TrainConfig: validation rules and their messages, overrides, YAML round trip, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kelpseg.errors import KelpsegError
from kelpseg.features.indices import BEST_INDICES
from kelpseg.layout import DataLayout
from kelpseg.recipes import train_recipe
from kelpseg.train.config import ConfigError, TrainConfig, load_config, parse_overrides

CONFIGS = train_recipe("best").parent


def _error(overrides: list[str]) -> str:
    with pytest.raises(KelpsegError) as info:
        load_config(None, overrides)
    return str(info.value)


def test_defaults_are_valid_and_derived_values() -> None:
    config = TrainConfig()
    assert config.bands == ["R", "G", "B", "SWIR", "NIR", "QA", "DEM"]
    assert config.in_channels == 9
    assert config.encoder_depth == 5
    assert config.resolved_split_path() == DataLayout(Path("data")).split_path("cross_val")
    assert config.resolved_band_stats_path().name == (
        "stats-fill_value=nan-mask_using_qa=True-mask_using_water_mask=True.json"
    )


def test_overrides_parse_yaml_values_and_comma_lists() -> None:
    config = load_config(
        None,
        [
            "lr=1e-3",
            "bands=R,G,B,DEM,QA",
            "decoder_channels=32,16,8",
            "encoder=resnet18",
            "encoder_weights=None",
            "augment=false",
            "limit_train_batches=0.5",
            "architecture=UNet++",
        ],
    )
    assert config.lr == pytest.approx(1e-3)
    assert config.bands == ["R", "G", "B", "DEM", "QA"]
    assert config.decoder_channels == [32, 16, 8] and config.encoder_depth == 3
    assert config.encoder_weights is None and config.augment is False
    assert config.limit_train_batches == 0.5
    assert config.architecture == "unetplusplus"
    assert parse_overrides(["spectral_indices=[DEMWM, NDVI]"]) == {"spectral_indices": ["DEMWM", "NDVI"]}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lr=-1"], "lr: Input should be greater than 0"),
        (["bands=R,G,X"], "unknown band(s) ['X']"),
        (["bands=R,R,G,B,QA,DEM"], "band(s) listed more than once: ['R']"),
        (["spectral_indices=DEMWM,NOPE"], "unknown spectral index 'NOPE'"),
        (["spectral_indices=DEMWM,NDVI,NDVI"], "listed more than once: ['NDVI']"),
        (["bands=R,G,B,QA", "mask_using_water_mask=false"], "DEMWM needs the DEM band"),
        (["bands=R,G,B,NIR,DEM"], "mask_using_qa=true needs the QA band"),
        (["spectral_indices=NDVI"], "mask_using_water_mask=true needs DEMWM in `spectral_indices`"),
        (
            ["bands=R,G,B,NIR,QA", "spectral_indices=NDVI", "mask_using_water_mask=true"],
            "needs the DEM band",
        ),
        (["image_size=340"], "padding needs image_size >= 350"),
        (["image_size=360"], "must be divisible by 32"),
        (["train_crop_size=100"], "train_crop_size=100 must be divisible by 32"),
        (["train_crop_size=384"], "larger than image_size"),
        (["kelp_crop_probability=0.5"], "kelp_crop_probability=0.5 needs train_crop_size"),
        (
            ["train_crop_size=96", "kelp_crop_probability=1.5"],
            "kelp_crop_probability: Input should be less than or equal to 1",
        ),
        (["architecture=unetx"], "unknown architecture 'unetx'; choose one of unet, unetplusplus"),
        (["encoder=tu-efficientnet_b55"], "close matches: tu-efficientnet_b5"),
        (["encoder=resnet19"], "unknown encoder 'resnet19'"),
        (["loss=dice+0.5*foo"], "unknown loss 'foo'; choose from dice, bce, focal, jaccard, lovasz, tversky"),
        (["loss=dice+"], "expected a name or a sum"),
        (["resize_strategy=crop"], "resize_strategy: expected 'pad' or 'resize'"),
        (["decoder_channels=[]"], "decoder_channels needs 1 to 5 entries"),
        (["monitor_metric=val/loss"], "use monitor_mode=min"),
        (["limit_train_batches=1.5"], "a fractional limit must be in (0, 1]"),
        (["run_name=a/b"], "run_name 'a/b' may only hold"),
        (["decision_threshold=1.0"], "decision_threshold: Input should be less than 1"),
        (["epochs=10", "val_every_n_epochs=4"], "epochs=10 must be a multiple of val_every_n_epochs=4"),
    ],
)
def test_validation_messages(overrides: list[str], expected: str) -> None:
    message = _error(overrides)
    assert expected in message
    assert "invalid training config" in message


def test_unknown_option_suggests_close_names(tmp_path: Path) -> None:
    assert "unknown option 'learning_rat'" in _error(["learning_rat=1"])
    assert "did you mean batch_size" in _error(["batchsize=4"])
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 2\nlosss: dice\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: invalid training config: losss: unknown option \(did you mean loss"
    ):
        TrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["epochs"])


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: training config not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        TrainConfig.from_yaml(bad)


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = load_config(None, ["lr=0.002", "bands=R,G,B,QA,DEM", "loss=dice + 0.5*bce", "devices=1"])
    assert config.loss == "dice+0.5*bce"
    path = config.save(tmp_path / "config.yaml")
    again = TrainConfig.from_yaml(path)
    assert again == config
    assert load_config(path, ["epochs=3"]).epochs == 3


def test_fixed_size_encoder_forces_resize() -> None:
    config = load_config(None, ["encoder=tu-vit_tiny_patch16_224", "architecture=dpt"])
    assert config.image_size == 224 and config.resize_strategy == "resize"


def test_best_yaml_is_the_reference_recipe() -> None:
    config = TrainConfig.from_yaml(CONFIGS / "best.yaml")
    assert config.bands == ["R", "G", "B", "SWIR", "NIR", "QA", "DEM"]
    assert tuple(config.spectral_indices) == tuple(BEST_INDICES)
    assert config.in_channels == 24
    assert (config.architecture, config.encoder, config.encoder_weights) == (
        "unet",
        "tu-efficientnet_b5",
        "imagenet",
    )
    assert config.decoder_channels == [256, 128, 64, 32, 16]
    assert (config.optimizer, config.lr, config.weight_decay) == ("adamw", 3e-4, 1e-4)
    assert (config.lr_scheduler, config.onecycle_pct_start, config.onecycle_div_factor) == (
        "onecycle",
        0.1,
        2.0,
    )
    assert config.onecycle_final_div_factor == 100.0
    assert (config.loss, config.precision, config.epochs, config.batch_size) == ("dice", "16-mixed", 50, 32)
    assert (config.samples_per_epoch, config.image_size, config.resize_strategy) == (10240, 352, "pad")
    assert config.normalization_strategy == "quantile" and config.monitor_metric == "val/dice"
    factors = (
        config.has_kelp_importance_factor,
        config.kelp_pixels_pct_importance_factor,
        config.qa_ok_importance_factor,
        config.qa_corrupted_pixels_pct_importance_factor,
        config.almost_all_water_importance_factor,
        config.dem_nan_pixels_pct_importance_factor,
        config.dem_zero_pixels_pct_importance_factor,
    )
    assert factors == (3.0, 0.2, 0.0, -1.0, 0.5, 0.25, -1.0)


def test_cpu_demo_yaml_is_small() -> None:
    config = TrainConfig.from_yaml(CONFIGS / "cpu-demo.yaml")
    assert config.encoder_weights is None
    assert config.train_crop_size is not None and config.train_crop_size <= 192
    assert config.batch_size <= 16
    # a few minutes on 2 CPU cores: a few thousand 96-192 px samples in all
    assert config.samples_per_epoch * config.epochs <= 8000
