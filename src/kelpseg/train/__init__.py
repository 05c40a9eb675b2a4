"""Training: config, dataset, transforms, sampler, models, losses, Lightning module, run directories."""

from kelpseg._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "TrainConfig": "config",
        "ConfigError": "config",
        "load_config": "config",
        "train": "run",
        "resume": "run",
        "load_run": "run",
        "LoadedRun": "run",
        "KelpSegmentationModule": "module",
        "KelpDataModule": "datamodule",
        "BatchTransform": "transforms",
        "create_model": "models",
        "create_loss": "losses",
        "LOSS_REGISTRY": "losses",
        "OPTIMIZERS": "optim",
        "SCHEDULERS": "optim",
    },
)
