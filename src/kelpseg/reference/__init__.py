"""Reading the reference solution's own artefacts: run directories, band-stats JSON, split parquet.

The reference is the Kelp Wanted 2nd-place code (docs: reference-system.md). Its users hold
Azure ML / MLflow run directories (``config.yaml`` + Lightning checkpoints of an smp 0.3.3 /
timm 0.9.2 model), a stats JSON and a split parquet; this package turns them into what kelpseg's
prediction, evaluation, ensembles, submissions and training take, without importing its code.

* :mod:`.rundir`     every layout its ``predict.py`` accepts, registered as a run format;
* :mod:`.config`     its ``config.yaml`` -> :class:`kelpseg.train.config.TrainConfig`;
* :mod:`.stats`      its stats JSON (found under ``<data>/processed/`` by its name pattern);
* :mod:`.checkpoint` safe loading and fitting its weights to kelpseg's model;
* :mod:`.loader`     a run dir -> :class:`kelpseg.train.run.LoadedRun`;
* :mod:`.importer`   ``kelpseg import-run``: a reference run -> a kelpseg run directory.
"""

from kelpseg.reference.rundir import ReferenceRunLayout, is_reference_run

__all__ = ["ReferenceRunLayout", "is_reference_run"]
