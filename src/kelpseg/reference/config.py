"""The reference solution's training ``config.yaml`` translated into a kelpseg :class:`TrainConfig`.

The reference logs its pydantic ``TrainConfig`` (reference-system.md §3.2): flag names of its
command line, booleans sometimes as the strings ``"True"``/``"False"``, band and index lists as
lists or comma strings, ``cv_split`` for the fold, ``fill_missing_pixels_with_torch_nan``,
``metadata_fp``/``dataset_stats_fp`` naming files on the machine it was trained on. What decides
a prediction (bands, indices and their masking, NaN fill, normalisation, image size, resize
strategy and interpolation, architecture, encoder, decoder, threshold) is translated exactly;
training-only options kelpseg does not have (a loss or scheduler it lacks) fall back to kelpseg's
with a warning, since they do not change what a trained model predicts.

The reference always appends DEMWM before its other indices (its transform adds the water mask
first so the others can be masked with it), so DEMWM moves to the front of the index list.

``reference_preprocessing`` is set: kelpseg then pads the raw tile before computing indices, as
the reference did (see :mod:`kelpseg.train.transforms`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kelpseg.errors import KelpsegError
from kelpseg.io.yaml_file import read_yaml
from kelpseg.train.config import TrainConfig

log = logging.getLogger(__name__)

#: Architectures of the reference that are its own code, not smp's (kelpseg cannot build them).
CUSTOM_ARCHITECTURES = ("efficientunet++", "efficinentunet++", "fcn", "resunet", "resunet++")
#: Reference option name -> kelpseg option name, for options copied as they are.
RENAMED = {
    "cv_split": "fold",
    "fill_missing_pixels_with_torch_nan": "fill_missing_pixels_with_nan",
    "cosine_T_mult": "cosine_t_mult",
}
COPIED = (
    "bands",
    "spectral_indices",
    "image_size",
    "resize_strategy",
    "interpolation",
    "normalization_strategy",
    "mask_using_qa",
    "mask_using_water_mask",
    "use_weighted_sampler",
    "samples_per_epoch",
    "has_kelp_importance_factor",
    "kelp_pixels_pct_importance_factor",
    "qa_ok_importance_factor",
    "qa_corrupted_pixels_pct_importance_factor",
    "almost_all_water_importance_factor",
    "dem_nan_pixels_pct_importance_factor",
    "dem_zero_pixels_pct_importance_factor",
    "batch_size",
    "num_workers",
    "seed",
    "architecture",
    "encoder",
    "decoder_channels",
    "decoder_attention_type",
    "optimizer",
    "lr",
    "weight_decay",
    "onecycle_pct_start",
    "onecycle_div_factor",
    "onecycle_final_div_factor",
    "cosine_eta_min",
    "reduce_lr_on_plateau_factor",
    "reduce_lr_on_plateau_patience",
    "reduce_lr_on_plateau_threshold",
    "reduce_lr_on_plateau_min_lr",
    "epochs",
    "accumulate_grad_batches",
    "limit_train_batches",
    "limit_val_batches",
    "monitor_metric",
    "monitor_mode",
    "save_top_k",
    "early_stopping_patience",
    "swa",
    "swa_epoch_start",
    "swa_annealing_epochs",
    "swa_lr",
    *RENAMED,
)
BOOLEAN_OPTIONS = (
    "fill_missing_pixels_with_torch_nan",
    "mask_using_qa",
    "mask_using_water_mask",
    "use_weighted_sampler",
    "swa",
    "pretrained",
    "sahi",
    "tta",
)
PRECISIONS = {"16-true": "16-mixed", "bf16-true": "bf16-mixed", "16": "16-mixed", "32": "32-true"}
SCHEDULERS = ("onecycle", "cosine", "cosine_with_warm_restarts", "reduce_lr_on_plateau", "none")
#: Name of the split parquet that the reference's training reads (``metadata_fp``).
SPLIT_FILENAME = "train_val_test_dataset.parquet"


class ReferenceConfigError(KelpsegError):
    """A reference config names something kelpseg cannot translate (index, encoder, architecture)."""


@dataclass(frozen=True)
class ReferenceConfig:
    """A translated reference config: the kelpseg config plus the facts only the reference has."""

    path: Path
    config: TrainConfig
    #: File name of the stats JSON it was trained with (``%3A`` decoded), None if not recorded.
    stats_filename: str | None
    #: Output logits of its model (2: background, kelp).
    num_classes: int
    #: Its ``decision_threshold`` (None: argmax, when predicting hard labels without a threshold).
    decision_threshold: float | None
    sahi: bool
    raw: dict[str, Any]


def parse_bool(value: Any, name: str, source: Path) -> bool:
    """``True``/``False`` as YAML booleans or as the strings the reference's CLI passed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ReferenceConfigError(f"{source}: option {name} = {value!r} is not a boolean")


def _none(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip().lower() in ("", "none", "null") else value


def _stats_filename(value: Any) -> str | None:
    value = _none(value)
    if not value:
        return None
    return Path(str(value).replace("\\", "/")).name.replace("%3A", ":")


def _data_root(value: Any) -> str:
    """The reference's ``data_dir`` is the raw folder (``data/raw``); kelpseg's is its parent."""
    path = Path(str(_none(value) or "data"))
    return str(path.parent if path.name == "raw" else path)


def translate(raw: dict[str, Any], source: Path) -> ReferenceConfig:
    """Translate the mapping of a reference ``config.yaml`` (``source`` names it in errors)."""
    data = {k: _none(v) for k, v in raw.items()}
    for name in BOOLEAN_OPTIONS:
        if data.get(name) is not None:
            data[name] = parse_bool(data[name], name, source)
    arch = str(data.get("architecture") or "").strip().lower()
    if not arch:
        raise ReferenceConfigError(f"{source}: no architecture given")
    if arch in CUSTOM_ARCHITECTURES:
        raise ReferenceConfigError(
            f"{source}: architecture {arch!r} is the reference's own model code, which kelpseg does "
            "not rebuild; supported: the smp architectures (unet, unet++, fpn, linknet, manet, pan, "
            "pspnet, deeplabv3, deeplabv3+)"
        )
    out: dict[str, Any] = {}
    for name in COPIED:
        if data.get(name) is not None:
            out[RENAMED.get(name, name)] = data[name]
    indices = out.get("spectral_indices")
    if isinstance(indices, str):
        indices = [v.strip() for v in indices.split(",") if v.strip()]
    if indices and "DEMWM" in indices:
        indices = ["DEMWM", *[i for i in indices if i != "DEMWM"]]
    if indices is not None:
        out["spectral_indices"] = indices
    loss = str(data.get("loss") or "dice")
    out["loss"] = loss if loss in ("dice", "bce", "focal", "jaccard", "lovasz", "tversky") else "dice"
    if out["loss"] != loss:
        log.warning("%s: loss %r has no kelpseg equivalent; training from it would use dice", source, loss)
    scheduler = str(data.get("lr_scheduler") or "none")
    out["lr_scheduler"] = scheduler if scheduler in SCHEDULERS else "none"
    if out["lr_scheduler"] != scheduler:
        log.warning("%s: lr_scheduler %r has no kelpseg equivalent; using none", source, scheduler)
    precision = str(data.get("precision") or "32-true")
    out["precision"] = PRECISIONS.get(precision, precision)
    threshold = data.get("decision_threshold")
    threshold = None if threshold is None else float(threshold)
    if threshold is not None and 0 < threshold < 1:
        out["decision_threshold"] = threshold
    out["data_dir"] = _data_root(data.get("data_dir"))
    out["reference_preprocessing"] = True
    out["encoder_weights"] = None  # the checkpoint holds the trained weights
    out["mlflow"] = False
    config = TrainConfig.from_dict(out, source=f"{source} (reference config)")
    return ReferenceConfig(
        path=source,
        config=config,
        stats_filename=_stats_filename(data.get("dataset_stats_fp")),
        num_classes=int(data.get("num_classes") or 2),
        decision_threshold=threshold,
        sahi=bool(data.get("sahi") or False),
        raw=dict(raw),
    )


def read_reference_config(path: str | Path) -> ReferenceConfig:
    """Read and translate a reference ``config.yaml``; one-line errors name the file."""
    path = Path(path)
    data = read_yaml(path, "reference training config", ReferenceConfigError)
    if not isinstance(data, dict):
        raise ReferenceConfigError(f"{path}: expected a mapping of option: value")
    return translate(data, path)
