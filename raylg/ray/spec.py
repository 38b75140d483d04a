"""A sweep file: a base run config, a search space over its dotted fields, ASHA, resources.

    name: digits-lg
    run_config: ../digits-tiny.yaml      # the base run config (relative to this file)
    set: {schedule.epochs: 12}           # fixed overrides of the base
    space:                               # any config field; grid | choice | uniform | loguniform | randint
      guidance.locality.beta: {grid: [0, 0.5, 2.5]}
      model.name: {grid: [deit_micro_patch4_32, pvt_v2_micro]}
    teacher: {config: ../teacher-digits-tiny.yaml}   # or {path: runs/t/teacher.safetensors}
    metric: val/top1
    asha: {grace_period: 3, reduction_factor: 2}
    resources: {workers: 0, cpus_per_worker: 1, gpus_per_worker: 0}

Loading checks every key and every value of the space against the run config before any
trial starts (unknown fields, empty choices, values out of range such as beta < 0).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from raylg import config as config_lib
from raylg.config import ConfigError

# what the trainer reports each epoch that a sweep may optimise; never the training loss,
# which includes the guidance term and so is not comparable across beta
METRICS = {"val/top1": "max", "val/top5": "max", "val/loss": "min"}
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass
class AshaSpec:
    max_t: int = 0  # 0 = the run's schedule.epochs
    grace_period: int = 0  # 0 = max(1, ceil(schedule.warmup_epochs)): guidance is not judged mid-warmup
    reduction_factor: float = 2.0


@dataclass
class ResourcesSpec:
    workers: int = 0  # Ray Train workers per trial; 0 = the loop runs in the trial's own process
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass
class TeacherSpec:
    path: str = ""  # an existing teacher (.safetensors with its card)
    config: str = ""  # or a teacher run config: trained once per sweep, cached by data fingerprint


@dataclass
class SweepSpec:
    name: str = "sweep"
    run_config: str = ""  # base run config file (relative to the sweep file); "" = the defaults
    set: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    metric: str = "val/top1"
    num_samples: int = 1  # repeats of the grid (random distributions are sampled this many times)
    max_concurrent: int = 2
    seed: int = 0  # search seed
    asha: AshaSpec = field(default_factory=AshaSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    storage: str = "runs/sweeps"  # local directory or s3://bucket/prefix
    mlflow_uri: str = ""  # "" = sqlite file in the sweep's directory
    failures: int = 2  # worker failures a trial survives (it resumes from its latest checkpoint)


@dataclass
class Sweep:
    spec: SweepSpec
    base: Any  # the resolved run Config every trial starts from
    source: Path | None

    @property
    def max_t(self) -> int:
        return self.spec.asha.max_t or self.base.schedule.epochs

    @property
    def grace_period(self) -> int:
        return self.spec.asha.grace_period or max(1, math.ceil(self.base.schedule.warmup_epochs))

    @property
    def mode(self) -> str:
        return METRICS[self.spec.metric]

    def trial_config(self, params: dict[str, Any]):
        return config_lib.apply_overrides(self.base, params)


def _values_to_check(key: str, dist: str, arg: Any) -> list[Any]:
    if dist in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"space.{key}.{dist}: expected a non-empty list of values, got {arg!r}")
        return arg
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg)):
        raise ConfigError(f"space.{key}.{dist}: expected [low, high], got {arg!r}")
    low, high = arg
    if not low < high:
        raise ConfigError(f"space.{key}.{dist}: low {low} must be below high {high}")
    if dist == "loguniform" and low <= 0:
        raise ConfigError(f"space.{key}.loguniform: bounds must be > 0, got {arg!r}")
    return [low, high - 1 if dist == "randint" else high]


MAX_COMBINATIONS = 128  # meta-device checks take ~0.1 s each; larger spaces are checked key by key only


def check_space(space: dict[str, Any], base, check: Callable | None = None) -> None:
    """Every key must be a field of the run config and every value (or bound) valid for it;
    `check(cfg)` (e.g. raylg.preflight.preflight: names, and each guidance term against the
    student) runs on each, then on every combination of them (up to MAX_COMBINATIONS), since
    a term can clash with an architecture only together (a distillation token on a PVT)."""
    values: dict[str, list[Any]] = {}
    for key, entry in space.items():
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in DISTRIBUTIONS:
            raise ConfigError(f"space.{key}: expected one of {{{', '.join(d + ': ...' for d in DISTRIBUTIONS)}}}, got {entry!r}")
        (dist, arg), = entry.items()
        values[key] = _values_to_check(key, dist, arg)
        for value in values[key]:
            try:
                cfg = config_lib.apply_overrides(base, {key: value})
                if check is not None:
                    check(cfg)
            except ValueError as e:  # ConfigError, ModelError, ...
                raise ConfigError(f"space.{key} ({dist} value {value!r}): {e}") from None
    if check is None or len(values) < 2 or math.prod(map(len, values.values())) > MAX_COMBINATIONS:
        return
    for combo in itertools.product(*values.values()):
        point = dict(zip(values, combo))
        try:
            check(config_lib.apply_overrides(base, point))
        except ValueError as e:
            raise ConfigError(f"space point {point}: {e}") from None


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None, check: Callable | None = None) -> Sweep:
    """Read a sweep file (or the defaults), apply dotted overrides to the sweep spec, check everything.
    `check(cfg, teacher=...)` runs on the base config and the space (teacher=True when the sweep
    names a teacher)."""
    source = Path(path).resolve() if path else None
    data = config_lib.read_yaml(source) if source else {}
    spec = config_lib.apply_overrides(config_lib.from_dict(SweepSpec, data), overrides or {})
    if spec.metric not in METRICS:
        raise ConfigError(f"metric: {spec.metric!r} is not a metric the trainer reports for selection "
                          f"(valid: {', '.join(METRICS)}; the training loss includes the guidance term)")
    if not spec.name or "/" in spec.name:
        raise ConfigError(f"name: {spec.name!r} must be a non-empty name without '/'")
    r = spec.resources
    if r.workers < 0 or r.cpus_per_worker <= 0 or r.gpus_per_worker < 0:
        raise ConfigError(f"resources: workers >= 0, cpus_per_worker > 0, gpus_per_worker >= 0; got {r}")
    if r.workers == 0 and r.gpus_per_worker:
        raise ConfigError("resources.gpus_per_worker needs resources.workers >= 1 (workers: 0 runs on the CPU in-process)")
    if spec.num_samples < 1 or spec.max_concurrent < 1:
        raise ConfigError(f"num_samples and max_concurrent must be >= 1, got {spec.num_samples}, {spec.max_concurrent}")
    if spec.asha.reduction_factor <= 1:
        raise ConfigError(f"asha.reduction_factor: {spec.asha.reduction_factor} must be > 1")
    rc = spec.run_config
    base_path = (source.parent / rc) if (rc and source) else (Path(rc) if rc else None)
    try:
        base = config_lib.load(base_path, spec.set)
    except ConfigError as e:
        raise ConfigError(f"base {str(base_path)!r} with set {spec.set}: {e}") from None
    if check is not None and (spec.teacher.path or spec.teacher.config):
        check = functools.partial(check, teacher=True)  # every trial gets the sweep's teacher: check LG's map too
    if check is not None:
        check(base)
    check_space(spec.space, base, check)
    sweep = Sweep(spec, base, source)
    if not 1 <= sweep.grace_period <= sweep.max_t:
        raise ConfigError(f"asha.grace_period: {sweep.grace_period} must be in [1, max_t={sweep.max_t}]")
    return sweep


def relative(sweep: Sweep, path: str) -> Path:
    """A path written in the sweep file, relative to that file."""
    p = Path(path)
    return p if p.is_absolute() or sweep.source is None else (sweep.source.parent / p)
