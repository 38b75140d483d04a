"""The sweep driver: Ray Tune + ASHA over a run config, each trial a Ray Train run.

Order of work: check everything (spec, teacher, MLflow, cluster resources, a resumed
sweep's identity) before any trial starts; train or reuse the sweep's one teacher; run Tune
(or restore it when the sweep directory already holds this sweep); then close every MLflow
child run with an honest status and log the sweep's table and plot on the parent run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from raylg import config as config_lib, teacher as teacher_lib
from raylg.ray.spec import Sweep, relative
from raylg.ray.trainer import EPOCHS_DONE, make_trainer
from raylg.tracking import Tracker, check_reachable, default_uri

SWEEP_FILE = "sweep.json"


class SweepError(RuntimeError):
    pass


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


@dataclass
class Paths:
    storage: str  # Tune/Train storage root for this sweep's runs (local dir or s3:// URI)
    local: Path  # this machine's directory for the sweep: MLflow sqlite, teacher cache, trial scratch

    @classmethod
    def of(cls, sweep: Sweep) -> "Paths":
        s = sweep.spec
        if is_remote(s.storage):
            return cls(s.storage.rstrip("/"), Path.home() / ".cache" / "raylg" / "sweeps" / s.name)
        root = Path(s.storage).resolve()
        return cls(str(root), root / s.name)


# ---------------------------------------------------------------------------------------
# checks before any trial


def identity(sweep: Sweep) -> dict[str, Any]:
    """What makes a sweep the same sweep: its space and the config its trials start from."""
    s = sweep.spec
    return {"space": s.space, "base": config_lib.flatten(sweep.base), "metric": s.metric, "num_samples": s.num_samples,
            "asha": {"max_t": sweep.max_t, "grace_period": sweep.grace_period, "reduction_factor": s.asha.reduction_factor}}


def check_identity(sweep: Sweep, paths: Paths) -> bool:
    """True when the sweep directory already holds this sweep; SweepError naming what differs otherwise."""
    f = paths.local / SWEEP_FILE
    if not f.is_file():
        return False
    old = json.loads(f.read_text())
    new = json.loads(json.dumps(identity(sweep)))
    diffs = []
    for part in ("space", "metric", "num_samples", "asha"):
        if old.get(part) != new[part]:
            diffs.append(f"{part}: was {old.get(part)!r}, now {new[part]!r}")
    for k in sorted(set(old["base"]) | set(new["base"])):
        if k not in ("teacher.path", "run.progress") and old["base"].get(k) != new["base"].get(k):
            diffs.append(f"base {k}: was {old['base'].get(k)!r}, now {new['base'].get(k)!r}")
    if diffs:
        raise SweepError(f"sweep name {sweep.spec.name!r} is already used in {str(paths.local)!r} by a different sweep "
                         f"({'; '.join(diffs)}); pick another --name or restore the old spec")
    return True


def check_resources(sweep: Sweep) -> None:
    r = sweep.spec.resources
    have = ray.cluster_resources()
    gpus_needed = r.workers * r.gpus_per_worker
    if gpus_needed > have.get("GPU", 0):
        raise SweepError(f"each trial asks for {r.workers} workers x {r.gpus_per_worker} GPUs = {gpus_needed:g} GPUs "
                         f"but the Ray cluster has {have.get('GPU', 0):g} GPUs (and {have.get('CPU', 0):g} CPUs); "
                         f"lower resources.workers / gpus_per_worker or add GPU nodes")
    cpus_needed = r.workers * r.cpus_per_worker + trial_cpus(sweep)
    if cpus_needed > have.get("CPU", 0):
        raise SweepError(f"each trial asks for {cpus_needed:g} CPUs but the Ray cluster has {have.get('CPU', 0):g}")


DRIVER_CPU = 0.01  # a trial that only drives its Train run (its workers hold the real resources)


def trial_cpus(sweep: Sweep) -> float:
    """CPUs of the Tune trial itself: the loop's when it runs in-process, a token otherwise."""
    r = sweep.spec.resources
    return r.cpus_per_worker if r.workers == 0 else DRIVER_CPU


def concurrency(sweep: Sweep) -> int:
    """max_concurrent, lowered on a local Ray to what its CPUs/GPUs can run at once (a remote
    cluster may autoscale, so there the spec's number stands and trials queue for nodes)."""
    n = sweep.spec.max_concurrent
    if os.environ.get("RAY_ADDRESS"):
        return n
    r, have = sweep.spec.resources, ray.cluster_resources()
    per_trial = r.workers * r.cpus_per_worker + trial_cpus(sweep)
    n = min(n, int(have.get("CPU", 0) // per_trial) or 1)
    if r.gpus_per_worker:
        n = min(n, int(have.get("GPU", 0) // (r.workers * r.gpus_per_worker)) or 1)
    return n


# ---------------------------------------------------------------------------------------
# the sweep's one teacher


def resolve_teacher(sweep: Sweep, paths: Paths, log=print) -> str:
    """Path of the sweep's teacher, hash-checked: given, cached for this data, or trained now."""
    t = sweep.spec.teacher
    if t.path:
        p = relative(sweep, t.path)
        teacher_lib.verify(p)
        return str(p.resolve())
    if sweep.base.teacher.path:
        teacher_lib.verify(sweep.base.teacher.path)
        return str(Path(sweep.base.teacher.path).resolve())
    if not t.config:
        return ""
    from raylg import data
    from raylg.fit import fit

    # the teacher learns the students' images: same dataset, subset and split as the base config
    same_data = {k: v for k, v in config_lib.flatten(sweep.base).items()
                 if k in ("data.name", "data.root", "data.per_class", "data.split_seed", "data.val_fraction")}
    tcfg = config_lib.load(relative(sweep, t.config), same_data)
    fingerprint = data.build(tcfg.data).fingerprint("train")
    key = hashlib.sha256(json.dumps([config_lib.flatten(tcfg), fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = paths.local.parent / "_teachers" / key
    weights = cache / "teacher.safetensors"
    if weights.is_file() and weights.with_suffix(".json").is_file():
        card = teacher_lib.verify(weights)
        if card["fingerprint"] == fingerprint:
            log(f"teacher: reusing {weights} (val top-1 {card['val_top1']:.2f}%)")
            return str(weights)
    log(f"teacher: training {tcfg.model.name} on {tcfg.data.name} once for this sweep -> {weights}")
    tcfg = config_lib.apply_overrides(tcfg, {"run.out_dir": str(cache.parent), "run.name": key, "run.progress": False})
    fit(tcfg, cache)
    weights, card = teacher_lib.publish(cache)
    log(f"teacher: val top-1 {card['val_top1']:.2f}%")
    return str(weights)


# ---------------------------------------------------------------------------------------
# Tune


def _distribution(entry: dict[str, Any]):
    (dist, arg), = entry.items()
    if dist in ("grid", "choice"):
        return (tune.grid_search if dist == "grid" else tune.choice)(arg)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[dist](*arg)


def param_space(sweep: Sweep) -> dict[str, Any]:
    # Tune splits nested dicts on "/", never on ".": dotted keys stay flat
    return {k: _distribution(v) for k, v in sweep.spec.space.items()}


def _trial_fn(sweep: Sweep, paths: Paths, teacher_path: str, tracking: dict[str, Any] | None):
    r = sweep.spec.resources

    def trial(params: dict[str, Any]) -> None:
        trial_id = tune.get_context().get_trial_id()
        overrides = {**params, "run.name": trial_id, "run.progress": False, "run.out_dir": str(paths.local / "trials")}
        if teacher_path:
            overrides["teacher.path"] = teacher_path
        cfg = sweep.trial_config(overrides)
        tags = {"student": cfg.model.name, "beta": cfg.guidance.locality.beta if (cfg.teacher.path or cfg.guidance.locality.source == "shards") else "none",
                "dataset": cfg.data.name, "per_class": cfg.data.per_class, "git_commit": _git_commit()}
        loop_config = {"cfg": config_lib.flatten(cfg), "run_dir": str(paths.local / "trials" / trial_id), "in_tune": True,
                       "tracking": None if tracking is None else {**tracking, "trial_id": trial_id, "tags": tags}}
        trainer = make_trainer(loop_config, name=trial_id, storage=f"{paths.storage}/{sweep.spec.name}/train",
                               workers=r.workers, cpus_per_worker=r.cpus_per_worker, gpus_per_worker=r.gpus_per_worker,
                               failures=sweep.spec.failures, callbacks=[TuneReportCallback()])
        trainer.fit()

    return trial


def _git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _tuner(sweep: Sweep, paths: Paths, trainable, resume: bool) -> tune.Tuner:
    trainable = tune.with_resources(trainable, {"cpu": trial_cpus(sweep)})
    path = f"{paths.storage}/{sweep.spec.name}"
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    asha = ASHAScheduler(time_attr=EPOCHS_DONE, max_t=sweep.max_t, grace_period=sweep.grace_period,
                         reduction_factor=sweep.spec.asha.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(metric=sweep.spec.metric, mode=sweep.mode, scheduler=asha,
                                    num_samples=sweep.spec.num_samples, max_concurrent_trials=concurrency(sweep)),
        # in-process trials checkpoint through Tune: keep the best and (always) the latest
        run_config=tune.RunConfig(name=sweep.spec.name, storage_path=paths.storage, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=sweep.spec.metric,
                                                                          checkpoint_score_order=sweep.mode)),
    )


# ---------------------------------------------------------------------------------------
# the whole sweep


def run(sweep: Sweep, *, log=print) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; returns one summary row per trial."""
    from raylg.ray import report

    paths = Paths.of(sweep)
    resume = check_identity(sweep, paths)
    paths.local.mkdir(parents=True, exist_ok=True)
    uri = sweep.spec.mlflow_uri or default_uri(paths.local)
    check_reachable(uri)
    _init_ray(uri)
    check_resources(sweep)
    teacher_path = resolve_teacher(sweep, paths, log)
    (paths.local / SWEEP_FILE).write_text(json.dumps(identity(sweep), indent=2, default=str))

    tracker = Tracker(uri)
    exp = tracker.experiment(sweep.spec.name, None if uri.startswith("http") else (paths.local / "mlartifacts").resolve().as_uri())
    parent = tracker.parent_run(exp, sweep.spec.name, {**{f"space.{k}": v for k, v in sweep.spec.space.items()},
                                                       "metric": sweep.spec.metric, "asha.max_t": sweep.max_t,
                                                       "asha.grace_period": sweep.grace_period,
                                                       "teacher": teacher_path or "none"})
    tracking = {"uri": uri, "experiment_id": exp, "parent_id": parent}
    log(f"sweep {sweep.spec.name}: {'resuming' if resume else 'starting'}; storage {paths.storage}/{sweep.spec.name}; MLflow {uri}")
    try:
        grid = _tuner(sweep, paths, _trial_fn(sweep, paths, teacher_path, tracking), resume).fit()
    except BaseException:
        tracker.close(parent, "FAILED")
        raise
    return report.finish(sweep, grid, tracker, exp, parent)


def _init_ray(mlflow_uri: str) -> None:
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
           if k in os.environ}  # never credentials: nodes get those from their own environment or role
    env["MLFLOW_TRACKING_URI"] = mlflow_uri
    # a trial whose workers wait for nodes (autoscaling, other trials) waits instead of failing
    env.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900"))
    # the dashboard stays on: Ray Train's placement-group cleanup queries the state API through it
    ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": env})


