"""A sweep file: a base run config, arms, seeds, a search space over its dotted fields, ASHA.

    name: digits-lg
    run_config: ../digits-tiny.yaml      # the base run config (relative to this file)
    set: {schedule.epochs: 12}           # fixed overrides of the base
    arms:                                # name -> overrides; every arm runs every point and seed
      baseline: {guidance.locality.beta: 0}
      lg: {}
    baseline_arm: baseline               # the arm the verdict compares the others with
    seeds: [1, 2, 3]                     # replicates; a seed sets each of seed_fields
    seed_fields: [run.seed, data.split_seed]
    space:                               # any config field; grid | choice | uniform | loguniform | randint
      data.per_class: {grid: [20, 50]}
    teacher: {config: ../teacher-digits-tiny.yaml}   # a teacher per data setting; or {path: t.safetensors}
    metric: val/top1
    asha: {grace_period: 3, reduction_factor: 2}     # or `asha: off`: every trial runs to the end
    resources: {workers: 0, cpus_per_worker: 1, gpus_per_worker: 0}

Trials are arms x seeds x the space's points (x num_samples). Loading checks everything
before any trial starts: every key and value of the space and of each arm against the run
config, the guidance terms of every arm x space combination against its student, arms that
override a swept field, a baseline_arm that names no arm, empty or repeated seeds.
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
    enabled: bool = True  # `asha: off` in a sweep file: every trial runs to max_t (what an evidence sweep wants)
    max_t: int = 0  # 0 = the run's schedule.epochs
    grace_period: int = 0  # 0 = max(1, ceil(schedule.warmup_epochs)): guidance is not judged mid-warmup
    reduction_factor: float = 2.0


@dataclass
class ResourcesSpec:
    workers: int = 0  # Ray Train workers per trial; 0 = the loop runs in the trial's own process
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # a fraction (0.25) packs 0- or 1-worker trials on a GPU; whole numbers above 1


# the fields of a trial's config that its teacher learns from too: a teacher per data setting
TEACHER_INHERITS = ["data.name", "data.root", "data.per_class", "data.split_seed", "data.val_fraction", "data.test_fraction"]


@dataclass
class TeacherSpec:
    path: str = ""  # one fixed teacher (.safetensors with its card), checked against every trial's data
    config: str = ""  # or a teacher run config: one teacher per distinct (config, data), trained before the trials
    set: dict[str, Any] = field(default_factory=dict)  # overrides of that config for every teacher
    inherit: list[str] = field(default_factory=lambda: list(TEACHER_INHERITS))  # fields each teacher takes from its trial


@dataclass
class SweepSpec:
    name: str = "sweep"
    run_config: str = ""  # base run config file (relative to the sweep file); "" = the defaults
    set: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    arms: dict[str, Any] = field(default_factory=dict)  # name -> {dotted field: value}; {} = one unnamed arm
    baseline_arm: str = ""  # "" = the arm named "baseline", if any
    seeds: list[int] | None = None  # None = no seed axis (the run config's seed)
    seed_fields: list[str] = field(default_factory=lambda: ["run.seed", "data.split_seed"])
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    metric: str = "val/top1"
    num_samples: int = 1  # repeats of the grid (random distributions are sampled this many times)
    max_concurrent: int = 2
    seed: int = 0  # search seed
    asha: AshaSpec = field(default_factory=AshaSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    storage: str = "runs/sweeps"  # local directory or s3://bucket/prefix
    mlflow_uri: str = ""  # "" = sqlite file in the sweep's directory
    failures: int = 2  # worker-group failures a Train-run trial survives, resuming from its latest checkpoint (plus one restart
    # of the trial itself when the node holding its Tune actor and Train controller dies)


ARM, SEED = "arm", "seed"  # Tune param keys beside the space's dotted fields (no dot: never a config field)


@dataclass
class Sweep:
    spec: SweepSpec
    base: Any  # the resolved run Config every trial starts from
    source: Path | None

    @property
    def asha(self) -> bool:
        return self.spec.asha.enabled

    @property
    def max_t(self) -> int:
        return self.spec.asha.max_t or self.base.schedule.epochs

    @property
    def grace_period(self) -> int:
        return self.spec.asha.grace_period or max(1, math.ceil(self.base.schedule.warmup_epochs))

    @property
    def mode(self) -> str:
        return METRICS[self.spec.metric]

    @property
    def baseline_arm(self) -> str | None:
        s = self.spec
        return s.baseline_arm or ("baseline" if "baseline" in s.arms else None)

    @property
    def swept(self) -> list[str]:
        """The space's fields, in the file's order: with arm and seed, what tells trials apart."""
        return list(self.spec.space)

    def overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's overrides of the base: its arm's, its seed's, then its space values."""
        out = dict(self.spec.arms.get(params.get(ARM), {}) or {})
        if SEED in params:
            out.update({f: params[SEED] for f in self.spec.seed_fields})
        out.update({k: v for k, v in params.items() if k not in (ARM, SEED)})
        return out

    def trial_config(self, params: dict[str, Any]):
        return config_lib.apply_overrides(self.base, self.overrides(params))


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
    if data.get("asha") in (False, "off", "false"):  # YAML reads `off` as false
        data["asha"] = {"enabled": False}
    spec = config_lib.apply_overrides(config_lib.from_dict(SweepSpec, data), overrides or {})
    if spec.metric not in METRICS:
        raise ConfigError(f"metric: {spec.metric!r} is not a metric the trainer reports for selection "
                          f"(valid: {', '.join(METRICS)}; the training loss includes the guidance term)")
    if not spec.name or "/" in spec.name:
        raise ConfigError(f"name: {spec.name!r} must be a non-empty name without '/'")
    r = spec.resources
    if r.workers < 0 or r.cpus_per_worker <= 0 or r.gpus_per_worker < 0:
        raise ConfigError(f"resources: workers >= 0, cpus_per_worker > 0, gpus_per_worker >= 0; got {r}")
    _check_gpu_share(r)
    if spec.num_samples < 1 or spec.max_concurrent < 1:
        raise ConfigError(f"num_samples and max_concurrent must be >= 1, got {spec.num_samples}, {spec.max_concurrent}")
    _check_arms_and_seeds(spec)
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
    for arm, overrides in (spec.arms or {None: {}}).items():  # every arm x every point of the space
        where = f"arms.{arm}: " if arm is not None else ""
        try:
            arm_base = config_lib.apply_overrides(base, overrides)
            if spec.seeds:
                arm_base = config_lib.apply_overrides(arm_base, {f: spec.seeds[0] for f in spec.seed_fields})
            if check is not None:
                check(arm_base)
            check_space(spec.space, arm_base, check)
        except ValueError as e:
            raise ConfigError(f"{where}{e}") from None
    _check_teacher(spec, base)
    sweep = Sweep(spec, base, source)
    if sweep.asha and not 1 <= sweep.grace_period <= sweep.max_t:
        raise ConfigError(f"asha.grace_period: {sweep.grace_period} must be in [1, max_t={sweep.max_t}]")
    return sweep


def _check_gpu_share(r: ResourcesSpec) -> None:
    """A worker takes whole GPUs or a fraction of one; a fraction only for a 1-worker trial, since Ray
    may place two ranks of one trial on the same GPU and NCCL refuses that (Ray issue 48012). An
    in-process trial (workers: 0) takes one GPU or a fraction of one. What the cluster's nodes hold
    is checked once Ray is up (raylg.ray.sweep.check_resources)."""
    g = r.gpus_per_worker
    if r.workers == 0 and g > 1:
        raise ConfigError(f"resources.gpus_per_worker: {g:g} with resources.workers: 0: an in-process trial trains in "
                          f"one process on one GPU (a fraction of it, or 1); give it workers >= 1 for more GPUs")
    if g > 1 and g != int(g):
        raise ConfigError(f"resources.gpus_per_worker: {g:g} is more than one GPU with a fractional part; a worker takes "
                          f"a fraction of one GPU (0.25: four trials share it) or whole GPUs (1, 2, ...)")
    if 0 < g < 1 and r.workers > 1:
        raise ConfigError(f"resources.gpus_per_worker: {g:g} with resources.workers: {r.workers}: two ranks of one trial "
                          f"could share a GPU, where NCCL fails (Ray issue 48012); a fraction of a GPU packs 1-worker "
                          f"trials (workers: 1), DDP trials take whole GPUs (gpus_per_worker: 1)")


def _check_arms_and_seeds(spec: SweepSpec) -> None:
    for arm, overrides in spec.arms.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"arms.{arm}: expected a mapping of dotted fields to values ({{}} for none), got {overrides!r}")
        both = sorted(set(overrides) & set(spec.space))
        if both:
            raise ConfigError(f"arms.{arm} overrides {', '.join(both)}, which space also sweeps; "
                              f"an arm fixes what the space varies, so set it in one place only")
        fixed = sorted(set(overrides) & set(spec.seed_fields)) if spec.seeds is not None else []
        if fixed:
            raise ConfigError(f"arms.{arm} overrides {', '.join(fixed)}, which seeds set (seed_fields)")
    if spec.baseline_arm and spec.baseline_arm not in spec.arms:
        raise ConfigError(f"baseline_arm: {spec.baseline_arm!r} names no arm (arms: {', '.join(spec.arms) or 'none'})")
    if spec.seeds is not None:
        if not spec.seeds:
            raise ConfigError("seeds: an empty list runs no trial; give at least one seed or leave seeds out")
        repeated = sorted({s for s in spec.seeds if spec.seeds.count(s) > 1})
        if repeated:
            raise ConfigError(f"seeds: {repeated} repeated; each seed is one replicate")
        if not spec.seed_fields:
            raise ConfigError("seed_fields: empty, so the seeds would change nothing; name run.seed at least")
        swept = sorted(set(spec.seed_fields) & set(spec.space))
        if swept:
            raise ConfigError(f"space sweeps {', '.join(swept)}, which seeds set (seed_fields); use one or the other")


RANDOM = ("uniform", "loguniform", "randint")


def _check_teacher(spec: SweepSpec, base) -> None:
    t = spec.teacher
    if t.path and t.config:
        raise ConfigError("teacher: give path (one fixed teacher) or config (a teacher per data setting), not both")
    fields = config_lib.flatten(base)
    unknown = [k for k in t.inherit if k not in fields]
    if unknown:
        raise ConfigError(f"teacher.inherit: {', '.join(unknown)} not a field of the run config")
    if not (t.path or t.config):
        return
    for key in t.inherit:
        entry = spec.space.get(key)
        if isinstance(entry, dict) and next(iter(entry), None) in RANDOM:
            raise ConfigError(f"space.{key}: the teacher learns from this field (teacher.inherit), so it must be swept "
                              f"with grid or choice: the driver trains every trial's teacher before the trials start")


def relative(sweep: Sweep, path: str) -> Path:
    """A path written in the sweep file, relative to that file."""
    p = Path(path)
    return p if p.is_absolute() or sweep.source is None else (sweep.source.parent / p)
