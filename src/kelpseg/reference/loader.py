"""A reference run directory -> kelpseg's :class:`~kelpseg.train.run.LoadedRun` (model + batch transform).

Everything kelpseg's prediction, evaluation, ensembles and submissions do with a run then works
unchanged. What comes from where:

* config: ``<artifacts>/config.yaml``, translated by :mod:`kelpseg.reference.config`;
* band stats: ``band_stats`` (a file) if given, else the reference stats JSON in
  ``<data_dir>/processed/`` (the file name the config records, else the newest with the same
  masking options). The config's own ``dataset_stats_fp`` names a file on the machine the run
  was trained on and is never opened;
* weights: the checkpoint of :class:`~kelpseg.reference.rundir.ReferenceRunLayout`, loaded
  safely and mapped onto kelpseg's one-logit model (:mod:`kelpseg.reference.checkpoint`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

from kelpseg.errors import KelpsegError
from kelpseg.reference.checkpoint import (
    ReferenceCheckpointError,
    load_into,
    model_state,
    read_checkpoint,
    to_one_logit,
)
from kelpseg.reference.config import SPLIT_FILENAME, ReferenceConfig, read_reference_config
from kelpseg.reference.rundir import ReferenceRunError, ReferenceRunLayout
from kelpseg.reference.stats import (
    check_channels,
    find_reference_stats,
    is_reference_stats,
    read_reference_stats,
)


def _stats_table(path: Path) -> dict[str, dict[str, Any]]:
    """A stats file in the reference's format, or kelpseg's own band-stats JSON."""
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if data is not None and not is_reference_stats(data) and isinstance(data.get("channels"), dict):
        from kelpseg.prep.band_stats import load_band_stats

        return dict(load_band_stats(path).channels)
    return read_reference_stats(path)


def resolve_stats_path(ref: ReferenceConfig, band_stats: Path | None, data_dir: Path | None) -> Path:
    if band_stats is not None:
        return Path(band_stats)
    if data_dir is None:
        recorded = f" (its config names {ref.stats_filename}, a file of the machine it was trained on)"
        raise ReferenceRunError(
            f"{ref.path}: a reference run needs its band stats: pass --band-stats FILE or --data-dir D "
            f"with the stats JSON in D/processed/{recorded if ref.stats_filename else ''}"
        )
    cfg = ref.config
    return find_reference_stats(
        Path(data_dir) / "processed",
        ref.stats_filename,
        cfg.fill_value_name,
        cfg.mask_using_qa,
        cfg.mask_using_water_mask,
    )


def read_run_config(
    run_dir: str | Path, data_dir: str | Path | None = None, band_stats: str | Path | None = None
) -> tuple[ReferenceRunLayout, ReferenceConfig, Path]:
    """The run's layout, its translated config (paths re-rooted at ``data_dir``) and stats file."""
    layout = ReferenceRunLayout(Path(run_dir))
    ref = read_reference_config(layout.config)
    if ref.sahi:
        raise ReferenceRunError(f"{layout.config}: runs trained for SAHI sliced inference are not supported")
    stats_path = resolve_stats_path(
        ref, Path(band_stats) if band_stats else None, Path(data_dir) if data_dir else None
    )
    update: dict[str, Any] = {"band_stats_path": str(stats_path)}
    if data_dir is not None:
        update["data_dir"] = str(data_dir)
        split = Path(data_dir) / "processed" / SPLIT_FILENAME
        if split.is_file():
            update["split_path"] = str(split)
    ref = ReferenceConfig(**{**ref.__dict__, "config": ref.config.model_copy(update=update)})
    return layout, ref, stats_path


def build_model(ref: ReferenceConfig, checkpoint: Path, in_channels: int, score: str) -> torch.nn.Module:
    """kelpseg's one-logit model of the config, holding the checkpoint's weights."""
    from kelpseg.train.module import model_from_config

    ckpt = read_checkpoint(checkpoint)
    hparams = ckpt.get("hyper_parameters") or {}
    stored = hparams.get("in_channels")
    if stored is not None and int(stored) != in_channels:
        raise ReferenceCheckpointError(
            f"{checkpoint}: trained with {stored} input channels, but {ref.path} gives {in_channels} "
            f"(bands + spectral indices)"
        )
    cfg = ref.config
    model = model_from_config(cfg, in_channels)
    state = to_one_logit(model_state(ckpt), score, checkpoint)
    what = (
        f"{cfg.architecture} with encoder {cfg.encoder}, decoder {cfg.decoder_channels} and "
        f"{in_channels} input channels ({ref.path})"
    )
    load_into(model, state, checkpoint, what)
    return model.eval()


def load_reference_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    map_location: str | torch.device = "cpu",
    *,
    band_stats: str | Path | None = None,
    data_dir: str | Path | None = None,
    score: str = "sigmoid",
) -> Any:
    """Rebuild model and batch transform of a reference run (see the module docstring)."""
    from kelpseg.train.run import LoadedRun
    from kelpseg.train.transforms import BatchTransform

    layout, ref, stats_path = read_run_config(run_dir, data_dir, band_stats)
    cfg = ref.config
    table = _stats_table(stats_path)
    channels = [*cfg.bands, *cfg.spectral_indices]
    check_channels(table, channels, stats_path, cfg.normalization_strategy)
    try:
        transform = BatchTransform.from_config(cfg, table)
    except (KelpsegError, ValueError) as exc:
        raise KelpsegError(f"{stats_path}: {exc}") from None
    path = layout.checkpoint("latest" if checkpoint in ("latest", "last") else checkpoint)
    if path.is_dir():
        raise ReferenceRunError(
            f"{path}: an MLflow pytorch model folder (a pickled model of the reference's classes); "
            "kelpseg reads the Lightning checkpoints under model/checkpoints/ only"
        )
    model = build_model(ref, path, transform.in_channels, score).to(map_location)
    # the reference cropped the padding, or resized back with nearest interpolation
    unpad = functools.partial(transform.unpad, mode="nearest")
    return LoadedRun(
        config=cfg,
        model=model,
        transform=transform.eval(),
        unpad=unpad,
        band_stats={name: dict(table[name]) for name in channels},
        run_dir=Path(run_dir),
        checkpoint=path,
    )
