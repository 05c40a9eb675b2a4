"""Scale-out on Ray: hyper-parameter sweeps and parallel fold training.

* :mod:`kelpseg.distributed.folds`: ``train_folds`` — every CV fold, sequentially or as Ray tasks,
  retried and resumed from the last checkpoint when a worker dies.
* :mod:`kelpseg.distributed.sweep`: ``run_sweep`` — Ray Tune search over any TrainConfig option,
  ASHA early stopping, MLflow parent/nested runs, resumable.
* :mod:`kelpseg.distributed.space`: the sweep space YAML format and its checks.
* :mod:`kelpseg.distributed.ray_runtime`: ``init_ray`` — embedded local Ray or a cluster address.
* :mod:`kelpseg.distributed.runner`: start, resume or skip one run by its run directory.

Importing this package is cheap; Ray is imported when first used. See ``docs/scale-out.md``.
"""

from kelpseg._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "train_folds": "folds",
        "available_folds": "folds",
        "FoldsResult": "folds",
        "run_sweep": "sweep",
        "SweepResult": "sweep",
        "load_space": "space",
        "SweepSpace": "space",
        "SweepRunOptions": "space",
        "SweepSpaceError": "space",
        "init_ray": "ray_runtime",
        "train_or_resume": "runner",
    },
)
