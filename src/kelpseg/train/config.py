"""Training options: one flat pydantic model, loadable from YAML, overridable with ``key=value``.

The fields are flat on purpose so that every option can be changed from the command line
(``kelpseg train --set lr=1e-4 --set bands=R,G,B``). A run directory stores the resolved config
as ``config.yaml``; that file alone (plus the checkpoint) is enough to predict again.

Defaults are CPU-friendly; the packaged recipe ``best`` (:mod:`kelpseg.recipes`) holds the
winning recipe of the reference solution (UNet + tu-efficientnet_b5, 24 input channels, Dice
loss, OneCycle, 50 epochs).

Validators enforce the reference rules (bands a subset of the seven, DEMWM needs DEM,
QA masking needs the QA band, water masking needs DEMWM) and reject unknown architectures,
encoders, indices and losses with the list of valid choices, before any tile is read.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kelpseg.bands import BANDS, TILE_SIZE
from kelpseg.errors import KelpsegError, UsageError
from kelpseg.io.yaml_file import read_yaml
from kelpseg.layout import RUN_NAME_CHARS, DataLayout, is_valid_run_name
from kelpseg.train.input_options import INTERPOLATIONS, NORMALIZATION_STRATEGIES, RESIZE_STRATEGIES
from kelpseg.train.optim import OPTIMIZERS, SCHEDULERS

log = logging.getLogger(__name__)

DEFAULT_BANDS = ["R", "G", "B", "SWIR", "NIR", "QA", "DEM"]
#: Input sizes that some timm encoders are built for (name contains the number): the reference
#: forces ``image_size`` to it and switches to resizing.
_FIXED_SIZE_TOKENS = (224, 256, 336, 384, 448, 512)


class ConfigError(UsageError):
    """A training option is unknown, malformed or inconsistent with another option."""


def _split_list(value: Any) -> Any:
    """Accept ``"R,G,B"`` (command line) as well as a YAML list."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class TrainConfig(BaseModel):
    """Every option of a training run (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False, protected_namespaces=())

    # ---- data -------------------------------------------------------------------------------
    data_dir: str = "data"
    split_path: str | None = None
    band_stats_path: str | None = None
    fold: int = Field(0, ge=0)
    bands: list[str] = Field(default_factory=lambda: list(DEFAULT_BANDS))
    spectral_indices: list[str] = Field(default_factory=lambda: ["DEMWM", "NDVI"])
    image_size: int = Field(352, gt=0)
    # The choices come from the registries (Literal[tuple] is Literal[a, b, ...]).
    resize_strategy: Literal[RESIZE_STRATEGIES] = "pad"  # type: ignore[valid-type]
    interpolation: Literal[INTERPOLATIONS] = "nearest"  # type: ignore[valid-type]
    normalization_strategy: Literal[NORMALIZATION_STRATEGIES] = "quantile"  # type: ignore[valid-type]
    fill_missing_pixels_with_nan: bool = True
    mask_using_qa: bool = True
    mask_using_water_mask: bool = True
    #: The reference solution's preprocessing order (pad/resize the raw tile before the indices;
    #: its stats files' non-finite min/max accepted): set for runs imported from it.
    reference_preprocessing: bool = False
    augment: bool = True
    train_crop_size: int | None = Field(None, gt=0)
    #: With train_crop_size: the chance that a training sample with kelp is cropped around one of
    #: its kelp pixels rather than anywhere (see transforms.random_crop). 0: uniform windows.
    kelp_crop_probability: float = Field(0.0, ge=0, le=1)
    use_weighted_sampler: bool = True
    samples_per_epoch: int = Field(10240, gt=0)
    has_kelp_importance_factor: float = 3.0
    kelp_pixels_pct_importance_factor: float = 0.2
    qa_ok_importance_factor: float = 0.0
    qa_corrupted_pixels_pct_importance_factor: float = -1.0
    almost_all_water_importance_factor: float = 0.5
    dem_nan_pixels_pct_importance_factor: float = 0.25
    dem_zero_pixels_pct_importance_factor: float = -1.0
    batch_size: int = Field(32, gt=0)
    num_workers: int = Field(2, ge=0)
    use_cache: bool = False
    #: Training on a CPU without train_crop_size: compute the input transform (indices,
    #: normalisation, padding) in the DataLoader workers, overlapping the model's step. The same
    #: values as in the training step (augmentation still runs there). None = on when training on
    #: a CPU with workers; on a GPU the transform always runs on the device.
    transform_in_workers: bool | None = None
    seed: int = 42

    # ---- model ------------------------------------------------------------------------------
    architecture: str = "unet"
    encoder: str = "tu-efficientnet_b5"
    encoder_weights: str | None = None
    decoder_channels: list[int] = Field(default_factory=lambda: [256, 128, 64, 32, 16])
    decoder_attention_type: str | None = None
    #: Initial kelp probability of the output layer (its bias starts at logit(prior)); None keeps
    #: smp's initialisation (bias 0: probability 0.5 everywhere). See models.set_output_bias.
    output_bias_prior: float | None = Field(None, gt=0, lt=1)

    # ---- optimisation -----------------------------------------------------------------------
    optimizer: Literal[tuple(OPTIMIZERS)] = "adamw"  # type: ignore[valid-type]
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    lr_scheduler: Literal[tuple(SCHEDULERS)] = "onecycle"  # type: ignore[valid-type]
    onecycle_pct_start: float = Field(0.1, gt=0, lt=1)
    onecycle_div_factor: float = Field(2.0, gt=0)
    onecycle_final_div_factor: float = Field(100.0, gt=0)
    cosine_eta_min: float = Field(1e-7, ge=0)
    cosine_t_mult: int = Field(2, ge=1)
    reduce_lr_on_plateau_factor: float = Field(0.95, gt=0, lt=1)
    reduce_lr_on_plateau_patience: int = Field(3, ge=0)
    reduce_lr_on_plateau_threshold: float = Field(1e-4, ge=0)
    reduce_lr_on_plateau_min_lr: float = Field(1e-6, ge=0)
    loss: str = "dice"
    bce_pos_weight: float | None = Field(None, gt=0)
    focal_gamma: float = Field(2.0, ge=0)
    focal_alpha: float | None = Field(None, ge=0, le=1)
    tversky_alpha: float = Field(0.5, ge=0)
    tversky_beta: float = Field(0.5, ge=0)

    # ---- runtime ----------------------------------------------------------------------------
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    #: Weights and batches in channels-last memory layout: the same computation (results differ from
    #: NCHW by float rounding only); faster convolutions in an isolated CPU measurement, not yet shown
    #: end to end (docs/performance.md), hence off by default.
    channels_last: bool = False
    epochs: int = Field(10, gt=0)
    accumulate_grad_batches: int = Field(1, gt=0)
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    #: Validate after every n-th epoch only (epochs must be a multiple). On a CPU with the real data's
    #: ~560 validation tiles per fold, validation costs more than a short training epoch.
    #: Checkpoint selection, early-stopping patience and the plateau scheduler then count
    #: validations, not epochs.
    val_every_n_epochs: int = Field(1, ge=1)
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(1, gt=0)
    strategy: str = "auto"
    deterministic: bool = False
    log_every_n_steps: int = Field(10, gt=0)

    # ---- evaluation and callbacks -----------------------------------------------------------
    monitor_metric: str = "val/dice"
    monitor_mode: Literal["max", "min"] = "max"
    save_top_k: int = Field(1, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    swa: bool = False
    swa_epoch_start: float = Field(0.75, gt=0)
    swa_annealing_epochs: int = Field(10, ge=1)
    swa_lr: float = Field(3e-5, gt=0)
    preview_n_tiles: int = Field(4, ge=0)
    preview_every_n_epochs: int = Field(1, ge=1)
    decision_threshold: float = Field(0.5, gt=0, lt=1)
    #: Learning check (kelpseg.train.health): after this many validations (0: off) a run whose best
    #: val/dice is below learning_check_min_dice, or that predicts no kelp pixel, is flagged as not
    #: learning (log, summary.json, MLflow); stop_if_not_learning then ends it at once.
    learning_check_after: int = Field(3, ge=0)
    learning_check_min_dice: float = Field(0.2, ge=0, lt=1)
    stop_if_not_learning: bool = False

    # ---- tracking ---------------------------------------------------------------------------
    output_dir: str = "runs"
    run_name: str | None = None
    experiment: str = "kelpseg-train"
    mlflow: bool = True
    mlflow_tracking_uri: str | None = None
    #: Copy checkpoints/best.ckpt into the MLflow run's artifacts (the run directory has it anyway).
    mlflow_log_checkpoint: bool = False

    # ---- field-level normalisation and checks ------------------------------------------------
    @field_validator("bands", "spectral_indices", mode="before")
    @classmethod
    def _lists_from_strings(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("decoder_channels", mode="before")
    @classmethod
    def _ints_from_string(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list):
            return [int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v for v in value]
        return value

    @field_validator("bands")
    @classmethod
    def _check_bands(cls, bands: list[str]) -> list[str]:
        if not bands:
            raise ValueError(f"at least one band is needed; choose from {list(BANDS)}")
        unknown = [b for b in bands if b not in BANDS]
        if unknown:
            raise ValueError(f"unknown band(s) {unknown}; expected a subset of {list(BANDS)}")
        dupes = sorted({b for b in bands if bands.count(b) > 1})
        if dupes:
            raise ValueError(f"band(s) listed more than once: {dupes}")
        return bands

    @field_validator("spectral_indices")
    @classmethod
    def _check_indices(cls, names: list[str]) -> list[str]:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"spectral index(es) listed more than once: {dupes}")
        if names:
            from kelpseg.features.indices import validate_index_names

            validate_index_names(names)  # its errors are ValueErrors: pydantic reports them
        return names

    @field_validator("decoder_channels")
    @classmethod
    def _check_decoder(cls, channels: list[int]) -> list[int]:
        if not 1 <= len(channels) <= 5:
            raise ValueError(f"decoder_channels needs 1 to 5 entries (encoder depth), got {len(channels)}")
        if any(c <= 0 for c in channels):
            raise ValueError(f"decoder_channels must be positive, got {channels}")
        return channels

    @field_validator("architecture")
    @classmethod
    def _check_architecture(cls, name: str) -> str:
        from kelpseg.train.models import resolve_architecture

        return resolve_architecture(name)

    @field_validator("encoder")
    @classmethod
    def _check_encoder(cls, name: str) -> str:
        from kelpseg.train.models import check_encoder_name

        check_encoder_name(name)
        return name

    @field_validator("loss")
    @classmethod
    def _check_loss(cls, spec: str) -> str:
        from kelpseg.train.losses import parse_loss_spec

        parse_loss_spec(spec)
        return spec.replace(" ", "")

    @field_validator("encoder_weights", "decoder_attention_type", "run_name", mode="before")
    @classmethod
    def _none_strings(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _check_limit(cls, value: int | float | None) -> int | float | None:
        if value is None:
            return None
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError(f"a fractional limit must be in (0, 1], got {value}")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"a batch-count limit must be >= 1, got {value}")
        return value

    @field_validator("run_name")
    @classmethod
    def _check_run_name(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_run_name(value):
            raise ValueError(f"run_name {value!r} may only hold {RUN_NAME_CHARS}")
        return value

    # ---- cross-field rules --------------------------------------------------------------------
    @model_validator(mode="after")
    def _check_consistency(self) -> TrainConfig:
        self._apply_fixed_size_encoder()
        if "DEMWM" in self.spectral_indices and "DEM" not in self.bands:
            raise ValueError("spectral index DEMWM needs the DEM band in `bands`")
        if self.mask_using_qa and "QA" not in self.bands:
            raise ValueError("mask_using_qa=true needs the QA band in `bands`")
        if self.mask_using_water_mask:
            if "DEM" not in self.bands:
                raise ValueError("mask_using_water_mask=true needs the DEM band in `bands`")
            if "DEMWM" not in self.spectral_indices:
                raise ValueError("mask_using_water_mask=true needs DEMWM in `spectral_indices`")
        if self.resize_strategy == "pad" and self.image_size < TILE_SIZE:
            raise ValueError(
                f"image_size={self.image_size} is smaller than the {TILE_SIZE}-pixel tile; "
                "padding needs image_size >= 350 (or set resize_strategy=resize)"
            )
        stride = 2**self.encoder_depth
        if self.image_size % stride:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by {stride} "
                f"(2**encoder_depth; encoder_depth = {self.encoder_depth} for {self.architecture})"
            )
        if self.train_crop_size is not None:
            if self.train_crop_size > self.image_size:
                raise ValueError(
                    f"train_crop_size={self.train_crop_size} is larger than image_size={self.image_size}"
                )
            if self.train_crop_size % stride:
                raise ValueError(f"train_crop_size={self.train_crop_size} must be divisible by {stride}")
        elif self.kelp_crop_probability > 0:
            raise ValueError(
                f"kelp_crop_probability={self.kelp_crop_probability} needs train_crop_size "
                "(whole tiles are not cropped)"
            )
        if self.monitor_metric.endswith("loss") and self.monitor_mode == "max":
            raise ValueError(f"monitor_metric={self.monitor_metric} is a loss: use monitor_mode=min")
        if self.swa and self.swa_epoch_start >= 1 and self.swa_epoch_start > self.epochs:
            raise ValueError(
                f"swa_epoch_start={self.swa_epoch_start} is after the last epoch ({self.epochs})"
            )
        if self.epochs % self.val_every_n_epochs:
            raise ValueError(
                f"epochs={self.epochs} must be a multiple of val_every_n_epochs={self.val_every_n_epochs}, "
                "so that the last epoch is validated"
            )
        return self

    def _apply_fixed_size_encoder(self) -> None:
        """Encoders built for one input size (name contains 224, 384, ...) get that size, resized."""
        for size in _FIXED_SIZE_TOKENS:
            if re.search(rf"(?<!\d){size}(?!\d)", self.encoder):
                if self.image_size != size or self.resize_strategy != "resize":
                    log.warning(
                        "encoder %s expects %dx%d inputs: using image_size=%d, resize_strategy=resize",
                        self.encoder,
                        size,
                        size,
                        size,
                    )
                    object.__setattr__(self, "image_size", size)
                    object.__setattr__(self, "resize_strategy", "resize")
                return

    # ---- derived values -----------------------------------------------------------------------
    @property
    def encoder_depth(self) -> int:
        """len(decoder_channels) for Unet-like decoders; the architecture's default for the others."""
        from kelpseg.train.models import get_architecture

        return get_architecture(self.architecture).encoder_depth(self.decoder_channels)

    @property
    def in_channels(self) -> int:
        """Model input channels: the chosen bands then the indices."""
        return len(self.bands) + len(self.spectral_indices)

    @property
    def fill_value_name(self) -> str:
        """How missing pixels are filled, as written in the band-stats file name."""
        return "nan" if self.fill_missing_pixels_with_nan else "0"

    def layout(self) -> DataLayout:
        return DataLayout(Path(self.data_dir))

    def resolved_split_path(self, layout: DataLayout | None = None) -> Path:
        """The CV split parquet: ``split_path``, else the layout's (default: ``data_dir``'s) CV
        split, else the reference solution's split parquet in ``processed/``."""
        if self.split_path:
            return Path(self.split_path)
        layout = layout or self.layout()
        own = layout.split_path("cross_val")
        if not own.is_file():
            from kelpseg.reference.config import SPLIT_FILENAME

            if (layout.processed / SPLIT_FILENAME).is_file():
                return layout.processed / SPLIT_FILENAME
        return own

    def resolved_band_stats_path(self, layout: DataLayout | None = None) -> Path:
        """The band-stats JSON: ``band_stats_path``, else the layout's file for these masking
        options, else the reference's stats JSON with the same options in ``processed/``."""
        if self.band_stats_path:
            return Path(self.band_stats_path)
        layout = layout or self.layout()
        fill = self.fill_value_name
        own = layout.band_stats_path(fill, self.mask_using_qa, self.mask_using_water_mask)
        if not own.is_file() and layout.processed.is_dir():
            from kelpseg.reference.stats import find_reference_stats

            try:
                return find_reference_stats(
                    layout.processed, None, fill, self.mask_using_qa, self.mask_using_water_mask
                )
            except KelpsegError:
                pass
        return own

    # ---- YAML -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110)

    def save(self, path: str | Path) -> Path:
        from kelpseg.io.atomic import write_text

        return write_text(path, self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "training config") -> TrainConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, source)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(_read_yaml(Path(path)), source=str(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "training config", ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, TrainConfig.model_fields, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            msg = f"unknown option{hint}"
        elif err["type"] == "literal_error":
            msg = msg.replace("Input should be", "expected")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{source}: invalid training config: " + "; ".join(parts)


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-4", "bands=R,G,B"]`` -> ``{"lr": 1e-4, "bands": "R,G,B"}`` (values parsed as YAML)."""
    parsed: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        if key not in TrainConfig.model_fields:
            close = difflib.get_close_matches(key, TrainConfig.model_fields, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"override {item!r}: unknown option {key!r}{hint}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and value.strip() in ("None", "none"):
            value = None
        parsed[key] = value
    return parsed


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults) and apply ``key=value`` overrides.

    ``path`` may name a packaged recipe (``cpu-demo``, ``best``) when no such file exists.
    """
    from kelpseg.recipes import resolve_recipe

    path = resolve_recipe(path) if path is not None else None
    data = _read_yaml(path) if path is not None else {}
    data.update(parse_overrides(overrides))
    source = str(path) if path is not None else "training config"
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return TrainConfig.from_dict(data, source=source)
