"""The sweep driver: Ray Tune + ASHA over a run config, each trial a Ray Train run.

Order of work: check everything (spec, MLflow, cluster resources, a resumed sweep's
identity, a fixed teacher against every trial's data) before any trial starts; train or
reuse a teacher per data setting (raylg.ray.teachers); run Tune over arms x seeds x the space
(or restore it when the sweep directory already holds this sweep); then close every MLflow
child run with an honest status and log the trials' table and the verdict on the parent run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from raylg import config as config_lib, storage, timing
from raylg.ray import teachers as teachers_lib
from raylg.ray.console import Console, plan, route_library_logs
from raylg.ray.spec import ARM, SEED, Sweep, relative
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
            "arms": s.arms, "seeds": s.seeds, "seed_fields": s.seed_fields if s.seeds else None,
            "teacher": {"path": s.teacher.path, "config": s.teacher.config, "set": s.teacher.set, "inherit": s.teacher.inherit},
            "asha": {"enabled": s.asha.enabled, "max_t": sweep.max_t, "grace_period": sweep.grace_period,
                     "reduction_factor": s.asha.reduction_factor}}


def check_identity(sweep: Sweep, paths: Paths) -> bool:
    """True when the sweep directory already holds this sweep; SweepError naming what differs otherwise."""
    f = paths.local / SWEEP_FILE
    if not f.is_file():
        return False
    old = json.loads(f.read_text())
    new = json.loads(json.dumps(identity(sweep)))
    diffs = []
    for part in ("space", "metric", "num_samples", "asha", "arms", "seeds", "seed_fields", "teacher"):
        if old.get(part) != new[part]:
            diffs.append(f"{part}: was {old.get(part)!r}, now {new[part]!r}")
    for k in sorted(set(old["base"]) | set(new["base"])):
        if k not in ("teacher.path", "run.progress") and old["base"].get(k) != new["base"].get(k):
            diffs.append(f"base {k}: was {old['base'].get(k)!r}, now {new['base'].get(k)!r}")
    if diffs:
        raise SweepError(f"sweep name {sweep.spec.name!r} is already used in {str(paths.local)!r} by a different sweep "
                         f"({'; '.join(diffs)}); pick another --name or restore the old spec")
    return True


def nodes() -> list[dict[str, float]]:
    """The resources of each alive node of the Ray cluster."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _gpus(node_list: list[dict[str, float]]) -> str:
    return ", ".join(f"{n.get('GPU', 0):g}" for n in node_list) or "no nodes"


def check_resources(sweep: Sweep, node_list: list[dict[str, float]] | None = None) -> None:
    """What one trial asks for must fit the cluster: its GPUs and CPUs in all, and each worker's
    GPUs (whole or a fraction) on one node. Runs after Ray is up, before any teacher or trial."""
    r = sweep.spec.resources
    node_list = nodes() if node_list is None else node_list
    have = {k: sum(n.get(k, 0) for n in node_list) for k in ("CPU", "GPU")}
    gpus_needed = r.workers * r.gpus_per_worker + trial_gpus(sweep)
    if gpus_needed > have["GPU"] + EPS:
        asks = (f"{r.workers} workers x {r.gpus_per_worker:g} GPUs = {gpus_needed:g} GPUs" if r.workers else
                f"{gpus_needed:g} GPUs in its own process (workers: 0)")
        raise SweepError(f"resources: each trial asks for {asks} "
                         f"but the Ray cluster has {have['GPU']:g} GPUs (and {have['CPU']:g} CPUs; GPUs per node: "
                         f"{_gpus(node_list)}); lower resources.workers / resources.gpus_per_worker or add GPU nodes")
    if r.gpus_per_worker and not any(n.get("GPU", 0) + EPS >= r.gpus_per_worker for n in node_list):
        raise SweepError(f"resources.gpus_per_worker: {r.gpus_per_worker:g} GPUs per worker, but no node of the Ray cluster "
                         f"has that many (GPUs per node: {_gpus(node_list)}); a worker's GPUs must be on one node")
    cpus_needed = r.workers * r.cpus_per_worker + trial_cpus(sweep)
    if cpus_needed > have["CPU"] + EPS:
        raise SweepError(f"each trial asks for {cpus_needed:g} CPUs but the Ray cluster has {have['CPU']:g}")


DRIVER_CPU = 0.01  # a trial that only drives its Train run (its workers hold the real resources)
EPS = 1e-6  # Ray keeps resource amounts to 1e-4


def trial_cpus(sweep: Sweep) -> float:
    """CPUs of the Tune trial itself: the loop's when it runs in-process, a token otherwise."""
    r = sweep.spec.resources
    return r.cpus_per_worker if r.workers == 0 else DRIVER_CPU


def trial_gpus(sweep: Sweep) -> float:
    """GPUs of the Tune trial itself: the loop's share when it runs in-process, none otherwise (its workers hold them)."""
    r = sweep.spec.resources
    return r.gpus_per_worker if r.workers == 0 else 0.0


def trial_resources(sweep: Sweep) -> dict[str, float]:
    """What Tune reserves for each trial's own process (an in-process trial on a GPU share: Ray's
    CUDA_VISIBLE_DEVICES then names its GPU)."""
    gpus = trial_gpus(sweep)
    return {"cpu": trial_cpus(sweep), **({"gpu": gpus} if gpus else {})}


def _fits(have: float, need: float) -> int:
    return int(have / need + EPS) if need > 0 else 1 << 30


def slots(sweep: Sweep, node_list: list[dict[str, float]]) -> int:
    """How many trials the nodes run at once. A trial of 0 or 1 worker lives on one node (with its
    Tune driver: 0.01 CPU beside a Train worker; or the loop itself, holding the worker's CPUs and
    GPU share), so each node holds what its CPUs and its GPUs allow, the lower of the two (a 0.25
    GPU share: 4 trials per GPU); a DDP trial's workers may spread, so they are counted against
    the whole cluster."""
    r = sweep.spec.resources
    cpus = r.workers * r.cpus_per_worker + trial_cpus(sweep)
    if r.workers <= 1:
        return sum(min(_fits(n.get("CPU", 0), cpus), _fits(n.get("GPU", 0), r.gpus_per_worker)) for n in node_list)
    total = {k: sum(n.get(k, 0) for n in node_list) for k in ("CPU", "GPU")}
    return min(_fits(total["CPU"], cpus), _fits(total["GPU"], r.workers * r.gpus_per_worker))


def concurrency(sweep: Sweep, node_list: list[dict[str, float]] | None = None) -> int:
    """max_concurrent, lowered on a local Ray to what its CPUs/GPUs can run at once (a remote
    cluster may autoscale, so there the spec's number stands and trials queue for nodes)."""
    n = sweep.spec.max_concurrent
    if os.environ.get("RAY_ADDRESS") and node_list is None:
        return n
    return max(1, min(n, slots(sweep, nodes() if node_list is None else node_list)))


# ---------------------------------------------------------------------------------------
# teachers


@dataclass
class Teachers:
    fixed: str = ""  # one teacher for every trial (teacher.path)
    by_request: dict[str, str] | None = None  # teacher request id -> published weights URI (teacher.config)

    def for_trial(self, sweep: Sweep, cfg) -> str:
        """The trial's teacher.path: "" when its guidance uses no teacher."""
        if not teachers_lib.uses_teacher(cfg):
            return ""
        if self.fixed:
            return self.fixed
        if self.by_request:
            req = teachers_lib.request_id(teachers_lib.teacher_config(sweep, cfg))
            return storage.join(self.by_request[req], teachers_lib.WEIGHTS)
        return ""


def resolve_teachers(sweep: Sweep, paths: Paths, log=print) -> Teachers:
    """Before any trial: check the fixed teacher against every trial's data, or train and
    publish (or reuse) a teacher per data setting."""
    t = sweep.spec.teacher
    fixed = str(relative(sweep, t.path).resolve()) if t.path else sweep.base.teacher.path
    if fixed:
        teachers_lib.check_fixed(sweep, fixed)
        return Teachers(fixed=str(Path(fixed).resolve()))
    if not t.config:
        return Teachers()
    return Teachers(by_request=teachers_lib.run(sweep, paths.storage, log))


# ---------------------------------------------------------------------------------------
# Tune


def _distribution(entry: dict[str, Any]):
    (dist, arg), = entry.items()
    if dist in ("grid", "choice"):
        return (tune.grid_search if dist == "grid" else tune.choice)(arg)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[dist](*arg)


def param_space(sweep: Sweep) -> dict[str, Any]:
    """Arms x seeds x the space. Tune splits nested dicts on "/", never on ".": dotted keys stay flat."""
    s = sweep.spec
    out: dict[str, Any] = {}
    if s.arms:
        out[ARM] = tune.grid_search(list(s.arms))
    if s.seeds:
        out[SEED] = tune.grid_search(list(s.seeds))
    return {**out, **{k: _distribution(v) for k, v in s.space.items()}}


def trial_tags(sweep: Sweep, params: dict[str, Any], cfg) -> dict[str, Any]:
    """What the MLflow UI filters and groups by: arm, seed, every swept field, the student, beta."""
    guided = bool(cfg.teacher.path) or cfg.guidance.locality.source == "shards"
    tags = {"student": cfg.model.name, "beta": cfg.guidance.locality.beta if guided else 0.0,
            "dataset": cfg.data.name, "per_class": cfg.data.per_class, "git_commit": _git_commit()}
    if ARM in params:
        tags["arm"] = params[ARM]
    if SEED in params:
        tags["seed"] = params[SEED]
    tags.update({k: params[k] for k in sweep.swept if k in params})
    return tags


def _trial_fn(sweep: Sweep, paths: Paths, teachers: Teachers, tracking: dict[str, Any] | None):
    r = sweep.spec.resources

    def trial(params: dict[str, Any]) -> None:
        started = time.time()
        trial_id = tune.get_context().get_trial_id()
        cfg = sweep.trial_config(params)
        cfg = config_lib.apply_overrides(cfg, {"run.name": trial_id, "run.progress": False,
                                               "run.out_dir": str(paths.local / "trials"),
                                               "teacher.path": teachers.for_trial(sweep, cfg)})
        tags = trial_tags(sweep, params, cfg)
        loop_config = {"cfg": config_lib.flatten(cfg), "run_dir": str(paths.local / "trials" / trial_id), "in_tune": True,
                       "tracking": None if tracking is None else {**tracking, "trial_id": trial_id, "tags": tags}}
        trainer = make_trainer(loop_config, name=trial_id, storage=f"{paths.storage}/{sweep.spec.name}/train",
                               workers=r.workers, cpus_per_worker=r.cpus_per_worker, gpus_per_worker=r.gpus_per_worker,
                               failures=sweep.spec.failures, callbacks=[TuneReportCallback()],
                               marks={"trial_start": started})
        trainer.fit()
        _mark_end(Path(loop_config["run_dir"]))

    return trial


def _mark_end(run_dir: Path) -> None:
    """The trial's end, after its Train run closed, added to the run's timing.json (raylg.timing)."""
    path = run_dir / "timing.json"
    if path.is_file():
        timing.append(path, "trial_end")


def _git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _tuner(sweep: Sweep, paths: Paths, trainable, resume: bool, log=print) -> tune.Tuner:
    trainable = tune.with_resources(trainable, trial_resources(sweep))
    path = f"{paths.storage}/{sweep.spec.name}"
    if resume and tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    asha = ASHAScheduler(time_attr=EPOCHS_DONE, max_t=sweep.max_t, grace_period=sweep.grace_period,
                         reduction_factor=sweep.spec.asha.reduction_factor) if sweep.asha else None
    return tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(metric=sweep.spec.metric, mode=sweep.mode, scheduler=asha,
                                    num_samples=sweep.spec.num_samples, max_concurrent_trials=concurrency(sweep),
                                    reuse_actors=True),  # a trial's process (imports, built data) serves the next
        # in-process trials checkpoint through Tune: keep the best and (always) the latest
        run_config=tune.RunConfig(name=sweep.spec.name, storage_path=paths.storage, verbose=0, callbacks=[Console(sweep, log)],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1,
                                                                          checkpoint_score_attribute=sweep.spec.metric,
                                                                          checkpoint_score_order=sweep.mode),
                                  # a trial whose own actor (it drives the Train run: workers >= 1) dies with its
                                  # node is started once more, and its Train run resumes from its latest checkpoint
                                  # (once: the Train run itself already retries a failing worker group `failures` times)
                                  failure_config=tune.FailureConfig(max_failures=1 if sweep.spec.resources.workers else 0)),
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
    route_library_logs(paths.local / "driver.log")
    check_reachable(uri)
    logs = _init_ray(uri)
    check_resources(sweep)
    log(f"sweep {sweep.spec.name}: {'resuming' if resume else 'starting'} {plan(sweep)}; "
        f"storage {paths.storage}/{sweep.spec.name}; MLflow {uri}")
    log(f"logs: Ray, Tune and MLflow in {paths.local / 'driver.log'}; what trials print in {logs or 'the Ray head node logs'}")
    teachers = resolve_teachers(sweep, paths, log)
    (paths.local / SWEEP_FILE).write_text(json.dumps(identity(sweep), indent=2, default=str))

    tracker = Tracker(uri)
    artifacts = None if uri.startswith("http") else (paths.local / "mlartifacts").resolve().as_uri()
    exp = tracker.experiment(sweep.spec.name, artifacts)
    parent = tracker.parent_run(exp, sweep.spec.name, {**{f"space.{k}": v for k, v in sweep.spec.space.items()},
                                                       "metric": sweep.spec.metric, "asha": sweep.asha,
                                                       "asha.max_t": sweep.max_t, "asha.grace_period": sweep.grace_period,
                                                       "arms": json.dumps(sweep.spec.arms),
                                                       "baseline_arm": sweep.baseline_arm or "none",
                                                       "seeds": sweep.spec.seeds or "none",
                                                       "teacher": teachers.fixed or sweep.spec.teacher.config or "none"},
                                key=f"{paths.storage}/{sweep.spec.name}")
    tracking = {"uri": uri, "experiment_id": exp, "parent_id": parent}
    try:
        grid = _tuner(sweep, paths, _trial_fn(sweep, paths, teachers, tracking), resume, log).fit()
    except BaseException:
        tracker.close(parent, "FAILED")
        raise
    return report.finish(sweep, grid, tracker, exp, parent, paths.local)


def _init_ray(mlflow_uri: str) -> str:
    """Join RAY_ADDRESS or start a local Ray; returns where its workers' logs are ("" if unknown).
    Workers' output stays in those logs (log_to_driver off): the console gets raylg's lines only."""
    if not ray.is_initialized():
        _start_ray(mlflow_uri)
    try:
        return ray._private.worker.global_worker.node.get_logs_dir_path()
    except Exception:  # a client connection, or Ray's internals moved
        return ""


def _start_ray(mlflow_uri: str) -> None:
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
           if k in os.environ}  # never credentials: nodes get those from their own environment or role
    env["MLFLOW_TRACKING_URI"] = mlflow_uri
    # a trial whose workers wait for nodes (autoscaling, other trials) waits instead of failing
    env.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900"))
    # the dashboard stays on: Ray Train's placement-group cleanup queries the state API through it
    ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": env}, log_to_driver=False)


