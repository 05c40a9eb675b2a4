"""Sweep space files, run-option checks and the Ray runtime helpers (no Ray cluster needed)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from kelpseg.distributed.ray_runtime import (
    RayConnectionError,
    absolute_config,
    apply_env,
    forwarded_env,
    init_ray,
    probe_address,
    resolve_address,
)
from kelpseg.distributed.space import (
    Param,
    SweepSpaceError,
    grid_points,
    load_space,
    parse_space,
    validate_space,
)
from kelpseg.errors import KelpsegError
from kelpseg.recipes import sweep_space
from kelpseg.train.config import TrainConfig, load_config

SWEEPS = sweep_space("cpu-smoke").parent
BASE = {"encoder": "resnet18", "decoder_channels": [16, 8, 4], "spectral_indices": ["DEMWM", "NDVI"]}


def space(params: dict[str, Any], **top: Any) -> Any:
    return parse_space({"params": params, **top})


def base() -> dict[str, Any]:
    return TrainConfig(**BASE).to_dict()


# ---- parsing ------------------------------------------------------------------------------------
def test_a_space_file_parses_every_distribution_and_the_run_options(tmp_path: Path) -> None:
    path = tmp_path / "my-space.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": "configs/train/cpu-demo.yaml",
                "metric": "val/iou",
                "scheduler": "asha",
                "num_samples": 3,
                "asha": {"grace_period": 2},
                "fixed": {"epochs": 3},
                "params": {
                    "lr": {"loguniform": ["1e-4", "1e-2"]},  # YAML 1.1 strings are accepted
                    "weight_decay": {"uniform": [0.0, 0.001]},
                    "has_kelp_importance_factor": {"quniform": [0.0, 4.0, 0.5]},
                    "samples_per_epoch": {"randint": [64, 128]},
                    "batch_size": {"lograndint": [2, 16]},
                    "loss": {"grid": ["dice", "bce"]},
                    "architecture,encoder": {"choice": [["unet", "resnet18"], ["fpn", "resnet34"]]},
                    "seed": 7,  # a constant
                },
            },
            sort_keys=False,
        )
    )
    parsed = load_space(path)
    assert parsed.name == "my-space" and parsed.base == Path("configs/train/cpu-demo.yaml")
    assert parsed.metric == "val/iou" and parsed.mode == "max"
    assert parsed.run_options == {"scheduler": "asha", "num_samples": 3}
    assert parsed.asha == {"grace_period": 2} and parsed.fixed == {"epochs": 3, "seed": 7}
    kinds = {p.key: (p.kind, p.args) for p in parsed.params}
    assert kinds["lr"] == ("loguniform", (1e-4, 1e-2))
    assert kinds["samples_per_epoch"] == ("randint", (64, 128))
    assert kinds["architecture,encoder"][0] == "choice"
    assert parsed.option_names() == [
        "lr",
        "weight_decay",
        "has_kelp_importance_factor",
        "samples_per_epoch",
        "batch_size",
        "loss",
        "architecture",
        "encoder",
    ]
    assert parsed.assign({"architecture,encoder": ["fpn", "resnet34"], "lr": 0.001}) == {
        "architecture": "fpn",
        "encoder": "resnet34",
        "lr": 0.001,
    }
    validate_space(parsed, base())


@pytest.mark.parametrize(
    ("params", "top", "message"),
    [
        ({"lr": {"normal": [0, 1]}}, {}, r"params\.lr: expected one of \['choice', 'grid'"),
        ({"lr": {"uniform": [1.0]}}, {}, r"params\.lr\.uniform: expected 2 numbers"),
        ({"lr": {"uniform": [2.0, 1.0]}}, {}, r"lower bound 2.0 must be below upper bound 1.0"),
        ({"lr": {"loguniform": [0.0, 1.0]}}, {}, r"a log range needs a positive lower bound"),
        ({"epochs": {"randint": [1.5, 4]}}, {}, r"integer bounds expected"),
        ({"lr": {"quniform": [0.0, 1.0, 0]}}, {}, r"the step q must be positive"),
        ({"lr": {"choice": []}}, {}, r"params\.lr\.choice: expected a non-empty list"),
        ({"a,b": {"choice": [["x"]]}}, {}, r"every value must be a list of 2 \(a, b\)"),
        ({"a,b": {"uniform": [0, 1]}}, {}, r"options drawn together need"),
        ({"lr": 0.1}, {}, r"'params' holds constants only"),
        ({"lr": {"choice": [0.1]}}, {"metric": "val/f1"}, r"metric 'val/f1' is not reported"),
        ({"lr": {"choice": [0.1]}}, {"metric": "val/loss"}, r"metric val/loss is a loss; use mode: min"),
        (
            {"lr": {"choice": [0.1]}},
            {"search": "bayes"},
            r"search='bayes': Input should be 'random' or",
        ),
        (
            {"lr": {"choice": [0.1]}},
            {"num_samples": 0},
            r"num_samples=0: Input should be greater than",
        ),
        ({"lr": {"choice": [0.1]}}, {"trials": 3}, r"unknown key\(s\) \['trials'\]"),
    ],
)
def test_malformed_spaces_are_rejected_with_the_place(params: Any, top: Any, message: str) -> None:
    with pytest.raises(SweepSpaceError, match=message):
        space(params, **top)


def test_missing_or_broken_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SweepSpaceError, match=r"nope\.yaml: sweep space file not found"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [unclosed")
    with pytest.raises(SweepSpaceError, match=r"bad\.yaml: not valid YAML"):
        load_space(bad)
    bad.write_text("- a list\n")
    with pytest.raises(SweepSpaceError, match=r"bad\.yaml: expected a mapping with a 'params' key"):
        load_space(bad)


# ---- validation against TrainConfig ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "fixed", "message"),
    [
        ({"learning_rate": {"choice": [0.1]}}, {}, r"params: unknown training option 'learning_rate'"),
        (
            {"lr": {"choice": [0.1]}},
            {"epoch": 2},
            r"fixed: unknown training option 'epoch' \(did you mean epochs",
        ),
        ({"encoder": {"uniform": [0, 1]}}, {}, r"params\.encoder: uniform needs a numeric option"),
        (
            {"epochs": {"uniform": [1, 4]}},
            {},
            r"params\.epochs: integer option; use randint, lograndint or choice",
        ),
        ({"lr": {"choice": [0.1]}}, {"lr": 0.2}, r"option 'lr' is set more than once"),
        ({"run_name": {"choice": ["a", "b"]}}, {}, r"run_name is set by the sweep for every trial"),
        (
            {"encoder": {"choice": ["resnet18", "resnet_nope"]}},
            {},
            r"params\.encoder='resnet_nope' is not a valid",
        ),
        (
            {"lr": {"uniform": [-1.0, 1.0]}},
            {},
            r"params\.lr=-1\.0 is not a valid training config: lr: .*greater than 0",
        ),
        ({"spectral_indices": {"choice": [["NDVI"]]}}, {}, r"needs DEMWM in `spectral_indices`"),
    ],
)
def test_options_and_values_are_checked_before_anything_runs(params: Any, fixed: Any, message: str) -> None:
    with pytest.raises(SweepSpaceError, match=message):
        validate_space(space(params, fixed=fixed), base())


def test_combinations_are_checked_on_samples_of_the_whole_space() -> None:
    # Each value is valid on its own (against the base), but no crop size fits every decoder depth.
    bad = space(
        {
            "decoder_channels": {"choice": [[16, 8, 4], [16, 8, 8, 4, 4]]},
            "train_crop_size": {"choice": [8, 32]},
        }
    )
    with pytest.raises(
        SweepSpaceError, match=r"the combination .* train_crop_size=8 must be divisible by 32"
    ):
        validate_space(bad, base())


def test_samples_stay_in_range_and_tune_domains_match() -> None:
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    rng = np.random.default_rng(0)
    p = Param(("lr",), "loguniform", (1e-4, 1e-2))
    draws = [p.sample(rng) for _ in range(200)]
    assert min(draws) >= 1e-4 and max(draws) <= 1e-2
    assert np.mean(np.log10(draws)) == pytest.approx(-3, abs=0.2)  # uniform in log space
    q = Param(("x",), "quniform", (0.0, 1.0, 0.25))
    assert {q.sample(rng) for _ in range(100)} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    r = Param(("n",), "randint", (2, 4))
    assert {r.sample(rng) for _ in range(100)} == {2, 3, 4}  # both bounds included

    assert isinstance(p.to_tune("random"), Float)
    domain = r.to_tune("random")
    assert isinstance(domain, Integer) and (domain.lower, domain.upper) == (2, 5)  # Tune excludes upper
    assert isinstance(Param(("a",), "choice", (1, 2)).to_tune("random"), Categorical)
    assert Param(("a",), "choice", (1, 2)).to_tune("grid") == tune.grid_search([1, 2])
    assert Param(("a",), "grid", (1, 2)).to_tune("random") == tune.grid_search([1, 2])
    with pytest.raises(SweepSpaceError, match=r"lr: a loguniform range cannot be searched with search=grid"):
        p.to_tune("grid")


def test_grid_points_cross_the_gridded_options() -> None:
    parsed = space(
        {"loss": {"grid": ["dice", "bce"]}, "seed": {"choice": [1, 2, 3]}, "lr": {"uniform": [0.1, 0.2]}}
    )
    assert parsed.grid_size("random") == 2 and parsed.grid_size("grid") == 6
    assert grid_points(parsed, "random") == [{"loss": "dice"}, {"loss": "bce"}]
    assert len(grid_points(parsed, "grid")) == 6


@pytest.mark.parametrize("name", ["cpu-smoke", "encoder-architecture", "sampler-factors", "spectral-indices"])
def test_shipped_spaces_are_valid_against_their_base(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # the spaces' base recipes are found from anywhere
    parsed = load_space(name)
    assert parsed.name == name and parsed.base is not None and parsed.metric == "val/dice"
    validate_space(parsed, load_config(parsed.base).to_dict())
    parsed.tune_space(parsed.run_options.get("search", "random"))


def test_shipped_spectral_index_subsets_start_with_demwm() -> None:
    from kelpseg.features.indices import BEST_INDICES

    parsed = load_space(SWEEPS / "spectral-indices.yaml")
    (param,) = [p for p in parsed.params if p.key == "spectral_indices"]
    assert all(subset[0] == "DEMWM" for subset in param.args)
    assert list(BEST_INDICES) in [list(s) for s in param.args]
    factors = load_space(SWEEPS / "sampler-factors.yaml")
    assert sum(name.endswith("_importance_factor") for name in factors.option_names()) == 7
    assert "samples_per_epoch" in factors.option_names()


def test_unknown_option_fails_before_ray_starts(tmp_path: Path) -> None:
    import ray

    from kelpseg.distributed.sweep import run_sweep

    path = tmp_path / "typo.yaml"
    path.write_text("params:\n  lrr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    started = time.perf_counter()
    with pytest.raises(
        SweepSpaceError, match=r"typo\.yaml: params: unknown training option 'lrr' \(did you mean lr\?\)"
    ):
        run_sweep(path, TrainConfig(**BASE), progress=False)
    assert time.perf_counter() - started < 10 and not ray.is_initialized()
    with pytest.raises(KelpsegError, match=r"override 'lrr=1': unknown option 'lrr'; did you mean lr\?"):
        run_sweep(path, TrainConfig(**BASE), overrides=["lrr=1"], progress=False)
    good = tmp_path / "good.yaml"
    good.write_text("params:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    with pytest.raises(SweepSpaceError, match=r"cannot override \['lr'\]: the space searches them"):
        run_sweep(good, TrainConfig(**BASE), overrides=["lr=0.1"], progress=False)
    with pytest.raises(SweepSpaceError, match=r"gpus_per_trial=2: a trial trains on at most one GPU"):
        run_sweep(good, TrainConfig(**BASE), gpus_per_trial=2, progress=False)
    with pytest.raises(SweepSpaceError, match=r"good\.yaml: no base config"):
        run_sweep(good, None, progress=False)
    # Inputs every trial would miss are reported by the driver, naming the file and the fix.
    missing = TrainConfig(**BASE, data_dir=str(tmp_path / "nodata"))
    with pytest.raises(
        SweepSpaceError,
        match=r"good\.yaml: base config: .*nodata.* run `kelpseg split` \(make train-val-test-split-cv",
    ):
        run_sweep(good, missing, progress=False)
    assert not ray.is_initialized()


# ---- Ray runtime helpers -------------------------------------------------------------------------------
def test_addresses_resolve_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) is None and resolve_address("local") is None
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert resolve_address(None) == "10.1.2.3:6379"
    assert resolve_address("auto") == "auto" and resolve_address("") is None


def test_an_unreachable_address_fails_quickly_naming_it() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for address in ("127.0.0.1:1", f"ray://127.0.0.1:{port}"):
        started = time.perf_counter()
        with pytest.raises(
            RayConnectionError, match=rf"Ray cluster at {address} is not reachable within 2 s"
        ):
            init_ray(address, connect_timeout_s=2.0)
        assert time.perf_counter() - started < 5
    with pytest.raises(RayConnectionError, match=r"Ray address 'nohost': expected 'auto', '<host>:<port>'"):
        probe_address("nohost")


def test_a_listening_port_passes_the_probe() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        probe_address(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=2.0)


def test_worker_environment_takes_the_tracking_and_kelpseg_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "KELPSEG_X": "1",
        "HOME": "/root",
        "AWS_REGION": "x",
    }
    assert forwarded_env(env) == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "KELPSEG_X": "1",
        "AWS_REGION": "x",
    }
    monkeypatch.setenv("KELPSEG_STALE", "left by an earlier task")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "old")
    apply_env({"MLFLOW_TRACKING_URI": "new"})
    import os

    assert os.environ["MLFLOW_TRACKING_URI"] == "new" and "KELPSEG_STALE" not in os.environ


def test_config_paths_become_absolute_for_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"")
    config = TrainConfig(
        **BASE, data_dir="data", output_dir="runs", split_path="s.parquet", encoder_weights="w.pth"
    )
    fixed = absolute_config(config)
    assert fixed.data_dir == str(tmp_path / "data") and fixed.output_dir == str(tmp_path / "runs")
    assert fixed.split_path == str(tmp_path / "s.parquet") and fixed.encoder_weights == str(
        tmp_path / "w.pth"
    )
    assert fixed.band_stats_path is None
    named = TrainConfig(**BASE, encoder_weights="imagenet", output_dir="s3://bucket/runs")
    assert absolute_config(named).encoder_weights == "imagenet"
    assert absolute_config(named).output_dir == "s3://bucket/runs"
