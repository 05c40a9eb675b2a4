"""``kelpseg import-run``: a reference run directory -> a kelpseg run directory, once.

Writes ``config.yaml`` (the translated config, ``reference_preprocessing: true``),
``band_stats.json`` (the stats of the model's channels, as the reference had them) and
``checkpoints/best.ckpt`` (+ ``last.ckpt`` from its ``latest`` when present) holding a
:class:`~kelpseg.train.module.KelpSegmentationModule` with the reference's weights, so the
imported run predicts exactly as the reference run does and needs neither its stats file nor
``--data-dir`` any more. The folder is built next to ``out_dir`` and renamed into place: an
existing run is never overwritten and a failure leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from kelpseg.errors import KelpsegError
from kelpseg.io.atomic import write_json
from kelpseg.layout import ReferenceRunLayout, RunLayout
from kelpseg.reference.loader import load_reference_run


def _module_checkpoint(run: Any) -> dict[str, Any]:
    import lightning

    from kelpseg.train.module import KelpSegmentationModule

    module = KelpSegmentationModule(run.config, run.band_stats, in_channels=run.transform.in_channels)
    module.model.load_state_dict(run.model.state_dict())
    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
    }


def import_run(
    ref_dir: str | Path,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    band_stats: str | Path | None = None,
    score: str = "sigmoid",
) -> Path:
    """Convert ``ref_dir`` into the kelpseg run directory ``out_dir``; returns ``out_dir``."""
    ref_dir, out_dir = Path(ref_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise KelpsegError(f"{out_dir}: already exists and is not empty; choose another folder")
    best = load_reference_run(ref_dir, "best", band_stats=band_stats, data_dir=data_dir, score=score)
    checkpoints = {"best": _module_checkpoint(best)}
    try:
        ReferenceRunLayout(ref_dir).checkpoint("latest")
        latest = load_reference_run(ref_dir, "latest", band_stats=band_stats, data_dir=data_dir, score=score)
        checkpoints["last"] = _module_checkpoint(latest)
    except KelpsegError:
        pass  # no latest checkpoint: best only
    config = best.config.model_copy(update={"run_name": out_dir.name})
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = RunLayout(tmp)
        config.save(files.config)
        write_json(
            files.band_stats,
            {"options": {"source": "reference", "imported_from": str(ref_dir)}, "channels": best.band_stats},
        )
        files.checkpoints.mkdir()
        for name, ckpt in checkpoints.items():
            torch.save(ckpt, files.checkpoint(name))
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
