"""Sweep spaces: a YAML file naming the TrainConfig options to search and how to draw them.

Format (every key but ``params`` is optional; run options given to ``run_sweep`` win)::

    name: lr-and-loss                   # sweep name (folder and MLflow parent run); default: file stem
    base: cpu-demo                      # the TrainConfig every trial starts from: a packaged
                                        # recipe name or a YAML path (relative to the cwd)
    experiment: kelpseg-sweeps          # MLflow experiment of the parent and trial runs (default: base's)
    metric: val/dice                    # objective reported every epoch (val/dice = competition Dice)
    mode: max                           # max | min
    search: random                      # random | grid
    scheduler: fifo                     # fifo | asha (early-stops trials whose metric lags)
    num_samples: 8                      # random draws (with grid: repeats of every grid point)
    max_concurrent_trials: 2
    cpus_per_trial: 1
    gpus_per_trial: 0
    max_failures: 1                     # restarts of a crashed trial (from its last checkpoint)
    trial_timeout_s: 7200               # stop a trial after this long (at its next epoch end)
    time_budget_s: 259200               # stop the whole sweep after this long
    asha: {grace_period: 1, reduction_factor: 2}
    fixed:                              # set on every trial
      epochs: 10
    params:                             # the search space: option -> distribution
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      weight_decay: {uniform: [0.0, 1.0e-3]}
      batch_size: {choice: [8, 16]}
      samples_per_epoch: {randint: [1024, 4096]}     # inclusive bounds
      loss: {grid: [dice, bce, "dice+0.5*bce"]}
      spectral_indices: {choice: [[DEMWM, NDVI], [DEMWM, NDVI, NDWI]]}
      architecture,encoder:                          # options drawn together (valid pairs only)
        choice: [[unet, resnet34], [fpn, tu-efficientnet_b0]]

Distributions: ``choice`` (one of the values, at random; with ``search: grid`` every value),
``grid`` (every value, crossed with the other grid options), ``uniform [lo, hi]``,
``loguniform [lo, hi]``, ``quniform [lo, hi, q]``, ``randint [lo, hi]`` and
``lograndint [lo, hi]`` (integers, both bounds included). A plain value is a constant.

Checks, all before Ray starts (:func:`validate_space`): every option name is a TrainConfig field
(else the error names it and suggests close names); a numeric distribution is only used on a
numeric field (``randint`` / ``lograndint`` for integer fields); every listed value and every
numeric bound builds a valid TrainConfig on top of the base, and so do a set of random samples of
the whole space (catching combinations the training validators reject).
"""

from __future__ import annotations

import difflib
import itertools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from kelpseg.errors import UsageError
from kelpseg.io.yaml_file import read_yaml

DISCRETE_KINDS = ("choice", "grid")
NUMERIC_KINDS = ("uniform", "loguniform", "quniform", "randint", "lograndint")
KINDS = DISCRETE_KINDS + NUMERIC_KINDS
SEARCHES = ("random", "grid")
SCHEDULERS = ("fifo", "asha")
#: Metrics every trial reports each epoch (what ``metric`` may name).
REPORTED_METRICS = (
    "val/dice",
    "val/iou",
    "val/precision",
    "val/recall",
    "val/macro_dice",
    "val/loss",
    "train/loss",
)
SPACE_KEYS = ("name", "base", "experiment", "metric", "mode", "asha", "fixed", "params")
ASHA_KEYS = ("grace_period", "reduction_factor", "brackets")
#: Random whole-space samples built into a TrainConfig by ``validate_space``.
VALIDATION_SAMPLES = 16


class SweepSpaceError(UsageError):
    """A sweep space file is malformed or names options / values that training rejects."""


@dataclass(frozen=True)
class Param:
    """One entry of ``params``: option name(s), distribution kind and its arguments."""

    names: tuple[str, ...]
    kind: str
    args: tuple[Any, ...]

    @property
    def key(self) -> str:
        """The key in the Tune search space (``"a,b"`` for options drawn together)."""
        return ",".join(self.names)

    @property
    def discrete(self) -> bool:
        return self.kind in DISCRETE_KINDS

    def candidates(self) -> list[Any]:
        """Values to check one by one: every listed value, or the bounds of a numeric range."""
        return list(self.args) if self.discrete else [self.args[0], self.args[1]]

    def sample(self, rng: np.random.Generator) -> Any:
        """One value drawn like Tune would (used to validate the space without Ray)."""
        if self.discrete:
            return self.args[int(rng.integers(len(self.args)))]
        lo, hi = self.args[0], self.args[1]
        if self.kind == "uniform":
            return float(rng.uniform(lo, hi))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        if self.kind == "quniform":
            q = self.args[2]
            return float(np.clip(round(rng.uniform(lo, hi) / q) * q, lo, hi))
        if self.kind == "randint":
            return int(rng.integers(lo, hi + 1))
        return int(np.clip(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))), lo, hi))

    def to_tune(self, search: str) -> Any:
        """The Tune domain: grid_search for ``grid`` (and ``choice`` in a grid search), else a sampler."""
        from ray import tune

        if self.kind == "grid" or (self.kind == "choice" and search == "grid"):
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        if search == "grid":
            raise SweepSpaceError(
                f"{self.key}: a {self.kind} range cannot be searched with search=grid; "
                "list the values with `grid: [...]` or use search=random"
            )
        lo, hi = self.args[0], self.args[1]
        if self.kind == "uniform":
            return tune.uniform(lo, hi)
        if self.kind == "loguniform":
            return tune.loguniform(lo, hi)
        if self.kind == "quniform":
            return tune.quniform(lo, hi, self.args[2])
        if self.kind == "randint":
            return tune.randint(lo, hi + 1)  # Tune excludes the upper bound
        return tune.lograndint(lo, hi + 1)

    def assign(self, value: Any) -> dict[str, Any]:
        """``{option: value}`` for a value drawn from this entry (a group splits its tuple)."""
        if len(self.names) == 1:
            return {self.names[0]: value}
        return dict(zip(self.names, value, strict=True))


@dataclass
class SweepSpace:
    """A parsed sweep space file (see the module docstring)."""

    path: Path | None
    name: str
    params: list[Param]
    base: Path | None = None
    experiment: str | None = None
    metric: str = "val/dice"
    mode: str = "max"
    fixed: dict[str, Any] = field(default_factory=dict)
    run_options: dict[str, Any] = field(default_factory=dict)
    asha: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "sweep space"

    def grid_size(self, search: str) -> int:
        """Number of grid points (1 when nothing is gridded)."""
        sizes = [len(p.args) for p in self.params if p.kind == "grid" or (p.discrete and search == "grid")]
        return math.prod(sizes)

    def tune_space(self, search: str) -> dict[str, Any]:
        return {p.key: p.to_tune(search) for p in self.params}

    def assign(self, drawn: Mapping[str, Any]) -> dict[str, Any]:
        """TrainConfig options from a Tune config (keys of ``tune_space``)."""
        options: dict[str, Any] = {}
        for param in self.params:
            if param.key in drawn:
                options.update(param.assign(drawn[param.key]))
        return options

    def option_names(self) -> list[str]:
        return [name for p in self.params for name in p.names]


# ---- parsing --------------------------------------------------------------------------------------
def load_space(path: str | Path) -> SweepSpace:
    """Read and check the structure of a sweep space file (option values are checked by validate_space)."""
    from kelpseg.recipes import SWEEPS, resolve_recipe

    path = resolve_recipe(path, SWEEPS)
    return parse_space(read_yaml(path, "sweep space file", SweepSpaceError), path=path)


def parse_space(data: Any, path: Path | None = None) -> SweepSpace:
    source = str(path) if path is not None else "sweep space"
    if not isinstance(data, dict):
        raise SweepSpaceError(f"{source}: expected a mapping with a 'params' key")
    top_level_keys = (*SPACE_KEYS, *RUN_OPTION_KEYS)
    unknown = [k for k in data if k not in top_level_keys]
    if unknown:
        raise SweepSpaceError(f"{source}: unknown key(s) {unknown}; expected some of {list(top_level_keys)}")
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise SweepSpaceError(f"{source}: 'params' must map option names to distributions")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SweepSpaceError(f"{source}: 'fixed' must map option names to values")
    params: list[Param] = []
    for key, spec in raw_params.items():
        param = _parse_param(str(key), spec, source)
        if param is None:  # a plain value: a constant
            fixed = {**fixed, str(key): spec}
        else:
            params.append(param)
    if not params:
        raise SweepSpaceError(f"{source}: 'params' holds constants only; nothing to search")
    asha = data.get("asha") or {}
    if not isinstance(asha, dict) or any(k not in ASHA_KEYS for k in asha):
        raise SweepSpaceError(f"{source}: 'asha' may set {list(ASHA_KEYS)}")
    space = SweepSpace(
        path=path,
        name=str(data.get("name") or (path.stem if path is not None else "sweep")),
        params=params,
        base=Path(data["base"]) if data.get("base") else None,
        experiment=data.get("experiment"),
        metric=str(data.get("metric", "val/dice")),
        mode=str(data.get("mode", "max")),
        fixed=dict(fixed),
        run_options={k: data[k] for k in RUN_OPTION_KEYS if data.get(k) is not None},
        asha=dict(asha),
    )
    check_run_options(space, space.run_options)
    if space.metric not in REPORTED_METRICS:
        raise SweepSpaceError(
            f"{source}: metric {space.metric!r} is not reported; use one of {REPORTED_METRICS}"
        )
    if space.mode not in ("max", "min"):
        raise SweepSpaceError(f"{source}: mode must be 'max' or 'min', got {space.mode!r}")
    if space.metric.endswith("loss") and space.mode != "min":
        raise SweepSpaceError(f"{source}: metric {space.metric} is a loss; use mode: min")
    return space


def _parse_param(key: str, spec: Any, source: str) -> Param | None:
    names = tuple(n.strip() for n in key.split(","))
    if not all(names):
        raise SweepSpaceError(f"{source}: params.{key}: empty option name")
    if not isinstance(spec, dict):
        return None if len(names) == 1 else _group_error(source, key)
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise SweepSpaceError(
            f"{source}: params.{key}: expected one of {list(KINDS)} (e.g. {{choice: [a, b]}}), got {spec}"
        )
    kind, args = next(iter(spec.items()))
    where = f"{source}: params.{key}.{kind}"
    if not isinstance(args, list) or not args:
        raise SweepSpaceError(f"{where}: expected a non-empty list")
    if kind in DISCRETE_KINDS:
        if len(names) > 1 and not all(isinstance(v, list) and len(v) == len(names) for v in args):
            raise SweepSpaceError(f"{where}: every value must be a list of {len(names)} ({', '.join(names)})")
        return Param(names, kind, tuple(args))
    if len(names) > 1:
        _group_error(source, key)
    args = [_number(v) for v in args]  # YAML 1.1 reads 1e-4 (no dot) as a string
    want = 3 if kind == "quniform" else 2
    if len(args) != want or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in args):
        raise SweepSpaceError(f"{where}: expected {want} numbers, got {args}")
    lo, hi = args[0], args[1]
    if not lo < hi:
        raise SweepSpaceError(f"{where}: lower bound {lo} must be below upper bound {hi}")
    if kind in ("loguniform", "lograndint") and lo <= 0:
        raise SweepSpaceError(f"{where}: a log range needs a positive lower bound, got {lo}")
    if kind in ("randint", "lograndint") and not all(isinstance(v, int) for v in args):
        raise SweepSpaceError(f"{where}: integer bounds expected, got {args}")
    if kind == "quniform" and args[2] <= 0:
        raise SweepSpaceError(f"{where}: the step q must be positive, got {args[2]}")
    return Param(names, kind, tuple(args))


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return (
            int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
        )
    return value


def _group_error(source: str, key: str) -> None:
    raise SweepSpaceError(
        f"{source}: params.{key}: options drawn together need {{choice|grid: [[...], ...]}}"
    )


class SweepRunOptions(BaseModel):
    """How a sweep runs (as opposed to what it searches): from the space file, then the caller."""

    model_config = ConfigDict(extra="forbid")

    search: Literal[SEARCHES] = "random"  # type: ignore[valid-type]
    scheduler: Literal[SCHEDULERS] = "fifo"  # type: ignore[valid-type]
    num_samples: StrictInt = Field(1, ge=1)
    max_concurrent_trials: StrictInt | None = Field(None, ge=1)
    cpus_per_trial: StrictInt | StrictFloat = Field(1, ge=0)
    #: A trial trains on at most one GPU (fractions share one).
    gpus_per_trial: StrictInt | StrictFloat = Field(0, ge=0)
    max_failures: StrictInt = Field(1, ge=0)
    trial_timeout_s: StrictInt | StrictFloat | None = Field(None, gt=0)
    time_budget_s: StrictInt | StrictFloat | None = Field(None, gt=0)

    @classmethod
    def checked(cls, options: Mapping[str, Any], source: str) -> SweepRunOptions:
        """Validated options (``None`` values take the defaults); SweepSpaceError names ``source``."""
        try:
            return cls.model_validate({k: v for k, v in options.items() if v is not None})
        except ValidationError as exc:
            parts = []
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else "option"
                value = err.get("input")
                parts.append(f"{key}={value!r}: {err['msg'].removeprefix('Value error, ')}")
            raise SweepSpaceError(f"{source}: invalid sweep run option(s): " + "; ".join(parts)) from None


RUN_OPTION_KEYS = tuple(SweepRunOptions.model_fields)


def check_run_options(space: SweepSpace, options: Mapping[str, Any]) -> SweepRunOptions:
    """Check run options (from the file or the caller) for type and range."""
    return SweepRunOptions.checked(options, space.source)


# ---- validation against TrainConfig ------------------------------------------------------------------
def _numeric_types(annotation: Any) -> set[type]:
    """{int}, {float}, {int, float} or set() for a TrainConfig field annotation."""
    args = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    return {a for a in args if a in (int, float)}


def _unknown_option(name: str, where: str) -> SweepSpaceError:
    from kelpseg.train.config import TrainConfig

    close = difflib.get_close_matches(name, TrainConfig.model_fields, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return SweepSpaceError(f"{where}: unknown training option {name!r}{hint}")


def check_option_names(space: SweepSpace) -> None:
    """Every searched or fixed option is a TrainConfig field, at most once, and of the right kind."""
    from kelpseg.train.config import TrainConfig

    fields = TrainConfig.model_fields
    seen: set[str] = set()
    for param in space.params:
        for name in param.names:
            if name not in fields:
                raise _unknown_option(name, f"{space.source}: params")
            if name in seen or name in space.fixed:
                raise SweepSpaceError(f"{space.source}: option {name!r} is set more than once")
            seen.add(name)
        if not param.discrete:
            numeric = _numeric_types(fields[param.names[0]].annotation)
            if not numeric:
                raise SweepSpaceError(
                    f"{space.source}: params.{param.key}: {param.kind} needs a numeric option, "
                    f"{param.key!r} is {fields[param.names[0]].annotation}"
                )
            if numeric == {int} and param.kind not in ("randint", "lograndint"):
                raise SweepSpaceError(
                    f"{space.source}: params.{param.key}: integer option; use randint, lograndint or choice"
                )
    for name in space.fixed:
        if name not in fields:
            raise _unknown_option(name, f"{space.source}: fixed")
    for name in ("run_name", "output_dir"):
        if name in seen or name in space.fixed:
            raise SweepSpaceError(f"{space.source}: {name} is set by the sweep for every trial; remove it")


def validate_space(space: SweepSpace, base: Mapping[str, Any], seed: int = 0) -> None:
    """Raise :class:`SweepSpaceError` unless every value of the space makes a valid TrainConfig.

    ``base`` is the base TrainConfig as a dict (the fixed options are applied on top of it).
    """
    from kelpseg.train.config import TrainConfig

    check_option_names(space)
    start = {**dict(base), **space.fixed}
    _build(TrainConfig, start, f"{space.source}: fixed options")
    for param in space.params:
        for value in param.candidates():
            _build(
                TrainConfig, {**start, **param.assign(value)}, f"{space.source}: params.{param.key}={value!r}"
            )
    rng = np.random.default_rng(seed)
    samples = [{p.key: p.args[0] if p.discrete else p.candidates()[0] for p in space.params}]
    samples += [{p.key: p.sample(rng) for p in space.params} for _ in range(VALIDATION_SAMPLES)]
    for drawn in samples:
        options = space.assign(drawn)
        _build(TrainConfig, {**start, **options}, f"{space.source}: the combination {options}")


def _build(cls: Any, options: dict[str, Any], where: str) -> Any:
    from kelpseg.train.config import ConfigError

    try:
        return cls.from_dict(options, source=where)
    except ConfigError as exc:
        raise SweepSpaceError(
            str(exc).replace(": invalid training config:", " is not a valid training config:")
        ) from None


def grid_points(space: SweepSpace, search: str) -> list[dict[str, Any]]:
    """Every grid point of the space as ``{key: value}`` (for documentation and tests)."""
    gridded = [p for p in space.params if p.kind == "grid" or (p.discrete and search == "grid")]
    return [
        dict(zip([p.key for p in gridded], combo, strict=True))
        for combo in itertools.product(*(p.args for p in gridded))
    ]
