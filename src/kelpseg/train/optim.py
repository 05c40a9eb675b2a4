"""Optimisers and learning-rate schedulers (reference §3.10), as Lightning ``configure_optimizers`` output.

* ``onecycle``: ``OneCycleLR(max_lr=lr, total_steps=trainer.estimated_stepping_batches, pct_start,
  div_factor, final_div_factor)``, stepped every optimizer step. With the best recipe the LR starts
  at 1.5e-4, peaks at 3e-4 after 10 % of training and anneals to 1.5e-6.
* ``cosine``: ``CosineAnnealingLR(T_max=epochs, eta_min)``, stepped per epoch.
* ``cosine_with_warm_restarts``: ``CosineAnnealingWarmRestarts(T_0=steps per epoch, T_mult, eta_min)``,
  stepped per step.
* ``reduce_lr_on_plateau``: ``ReduceLROnPlateau(mode="min", factor, patience, threshold, min_lr)`` on
  ``val/loss``, after each validation (every ``val_every_n_epochs`` epochs).
* ``none``: a constant LR.

SGD uses momentum 0.9 (plain SGD without momentum trains poorly and cannot cycle momentum under
OneCycle); Adam and AdamW use the PyTorch defaults besides ``lr`` and ``weight_decay``.

The registries ``OPTIMIZERS`` and ``SCHEDULERS`` are the list of choices the training config
offers; this module imports torch only when a factory runs, so the config can read them cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from kelpseg.train.config import TrainConfig

SGD_MOMENTUM = 0.9


def _optim() -> ModuleType:
    import torch.optim

    return torch.optim


def _sched() -> ModuleType:
    from torch.optim import lr_scheduler

    return lr_scheduler


OPTIMIZERS: dict[str, Callable[[Iterable[Any], TrainConfig], torch.optim.Optimizer]] = {
    "adamw": lambda p, c: _optim().AdamW(p, lr=c.lr, weight_decay=c.weight_decay),
    "adam": lambda p, c: _optim().Adam(p, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda p, c: _optim().SGD(p, lr=c.lr, weight_decay=c.weight_decay, momentum=SGD_MOMENTUM),
}


def create_optimizer(config: TrainConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    return OPTIMIZERS[config.optimizer](params, config)


def _onecycle(opt: torch.optim.Optimizer, c: TrainConfig, total_steps: int, epochs: int) -> dict[str, Any]:
    scheduler = _sched().OneCycleLR(
        opt,
        max_lr=c.lr,
        total_steps=max(1, total_steps),
        pct_start=c.onecycle_pct_start,
        div_factor=c.onecycle_div_factor,
        final_div_factor=c.onecycle_final_div_factor,
    )
    return {"scheduler": scheduler, "interval": "step"}


def _cosine(opt: torch.optim.Optimizer, c: TrainConfig, total_steps: int, epochs: int) -> dict[str, Any]:
    return {
        "scheduler": _sched().CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=c.cosine_eta_min),
        "interval": "epoch",
    }


def _warm_restarts(
    opt: torch.optim.Optimizer, c: TrainConfig, total_steps: int, epochs: int
) -> dict[str, Any]:
    steps_per_epoch = max(1, total_steps // max(1, epochs))
    scheduler = _sched().CosineAnnealingWarmRestarts(
        opt, T_0=steps_per_epoch, T_mult=c.cosine_t_mult, eta_min=c.cosine_eta_min
    )
    return {"scheduler": scheduler, "interval": "step"}


def _plateau(opt: torch.optim.Optimizer, c: TrainConfig, total_steps: int, epochs: int) -> dict[str, Any]:
    scheduler = _sched().ReduceLROnPlateau(
        opt,
        mode="min",
        factor=c.reduce_lr_on_plateau_factor,
        patience=c.reduce_lr_on_plateau_patience,
        threshold=c.reduce_lr_on_plateau_threshold,
        min_lr=c.reduce_lr_on_plateau_min_lr,
    )
    # steps after the epochs that validate: (epoch + 1) % n == 0 for both Lightning counters
    return {
        "scheduler": scheduler,
        "interval": "epoch",
        "frequency": c.val_every_n_epochs,
        "monitor": "val/loss",
        "strict": True,
    }


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainConfig, int, int], dict[str, Any]] | None] = {
    "onecycle": _onecycle,
    "cosine": _cosine,
    "cosine_with_warm_restarts": _warm_restarts,
    "reduce_lr_on_plateau": _plateau,
    "none": None,
}


def create_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int, epochs: int
) -> dict[str, Any] | None:
    """Lightning ``lr_scheduler`` dict (scheduler, interval, ...) or None for a constant LR.

    ``total_steps`` is the number of optimizer steps of the whole run
    (``trainer.estimated_stepping_batches``).
    """
    factory = SCHEDULERS[config.lr_scheduler]
    if factory is None:
        return None
    out = factory(optimizer, config, int(total_steps), int(epochs))
    out.setdefault("frequency", 1)
    out["name"] = "lr"
    return out


def configure_optimizers(config: TrainConfig, params: Iterable[Any], total_steps: int, epochs: int) -> Any:
    """What ``LightningModule.configure_optimizers`` returns for ``config``."""
    optimizer = create_optimizer(config, params)
    scheduler = create_scheduler(config, optimizer, total_steps, epochs)
    if scheduler is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": scheduler}
