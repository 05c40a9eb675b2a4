"""Optimisers and LR schedulers: each builds, steps, and follows the reference's schedule shapes."""

from __future__ import annotations

import pytest
import torch

from kelpseg.train.config import TrainConfig
from kelpseg.train.optim import configure_optimizers, create_optimizer, create_scheduler


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3))]


def _step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    loss = (optimizer.param_groups[0]["params"][0] ** 2).sum()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizers(name: str) -> None:
    optimizer = create_optimizer(TrainConfig(optimizer=name, lr=0.01, weight_decay=0.001), _params())
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[0]["weight_decay"] == 0.001
    expected = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    assert type(optimizer) is expected
    _step(optimizer)
    assert optimizer.param_groups[0]["params"][0].detach().lt(1).all()


def test_onecycle_follows_the_reference_schedule() -> None:
    config = TrainConfig(lr=3e-4, lr_scheduler="onecycle")
    optimizer = create_optimizer(config, _params())
    sched = create_scheduler(config, optimizer, total_steps=100, epochs=10)
    assert sched is not None and sched["interval"] == "step"
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(99):
        _step(optimizer)
        sched["scheduler"].step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1.5e-4)  # lr / div_factor 2
    assert max(lrs) == pytest.approx(3e-4) and lrs.index(max(lrs)) == 9  # peak at 10 %
    assert lrs[-1] == pytest.approx(1.5e-6, rel=1e-3)  # initial / final_div_factor 100


def test_cosine_is_per_epoch_and_warm_restarts_per_step() -> None:
    config = TrainConfig(lr=1e-3, lr_scheduler="cosine", cosine_eta_min=0.0)
    optimizer = create_optimizer(config, _params())
    sched = create_scheduler(config, optimizer, total_steps=40, epochs=4)
    assert sched["interval"] == "epoch" and sched["scheduler"].T_max == 4
    for _ in range(2):
        _step(optimizer)
        sched["scheduler"].step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)  # half way down the cosine

    config = TrainConfig(lr=1e-3, lr_scheduler="cosine_with_warm_restarts", cosine_t_mult=2)
    optimizer = create_optimizer(config, _params())
    sched = create_scheduler(config, optimizer, total_steps=40, epochs=4)
    assert sched["interval"] == "step" and sched["scheduler"].T_0 == 10 and sched["scheduler"].T_mult == 2
    lrs = []
    for _ in range(11):
        lrs.append(optimizer.param_groups[0]["lr"])
        _step(optimizer)
        sched["scheduler"].step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] < 1e-4
    assert optimizer.param_groups[0]["lr"] < lrs[0]  # second cycle is 20 steps long, now descending
    assert lrs[10] == pytest.approx(1e-3)  # restart after T_0 steps


def test_plateau_monitors_val_loss_and_none_gives_a_bare_optimizer() -> None:
    config = TrainConfig(lr=1e-3, lr_scheduler="reduce_lr_on_plateau", reduce_lr_on_plateau_patience=0)
    out = configure_optimizers(config, _params(), total_steps=10, epochs=2)
    sched = out["lr_scheduler"]
    assert sched["monitor"] == "val/loss" and sched["interval"] == "epoch"
    optimizer = out["optimizer"]
    for value in (1.0, 1.0, 1.0):
        _step(optimizer)
        sched["scheduler"].step(value)
    assert optimizer.param_groups[0]["lr"] < 1e-3
    bare = configure_optimizers(TrainConfig(lr_scheduler="none"), _params(), total_steps=10, epochs=2)
    assert isinstance(bare, torch.optim.AdamW)
