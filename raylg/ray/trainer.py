"""One trial as a Ray Train run: the plain `fit` loop plus Ray's prepare/report calls.

`train_loop(config)` runs on every worker (or in-process with `workers: 0`). Rank 0 owns the
run directory, the checkpoints and the MLflow child run (recorded by the same fit() callback as
a plain run, raylg.tracking.MlflowCallback); every rank reports each epoch so Ray Train (and
Tune, through TuneReportCallback) sees it. A restarted worker group resumes from the latest
reported checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.backend import BackendConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

import raylg
from raylg import config as config_lib, storage, timing
from raylg.fit import Hooks, fit
from raylg.ray import teachers

IMPORTED = time.time()  # raylg.timing: imports end here in a fresh worker process


EPOCHS_DONE = "epochs_done"  # ASHA's time attribute: survives trial restarts, unlike an iteration counter


class Session:
    """Where a loop reports. Ray Train workers use ray.train; a loop that runs in-process
    inside a Tune trial (ScalingConfig(num_workers=0)) must use ray.tune's equivalents,
    because Ray 2.60 refuses ray.train.get_context/report/get_checkpoint in a Tune session."""

    def __init__(self, via: str, gpus: float = 0.0):
        self.via = via
        self.gpus = gpus  # the GPUs (or share of one) Ray gave this worker or in-process trial
        if via == "train":
            ctx = ray.train.get_context()
            self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        else:
            self.rank, self.world_size = 0, 1

    def get_checkpoint(self):
        return ray.train.get_checkpoint() if self.via == "train" else ray.tune.get_checkpoint()

    def checkpoint(self, directory: Path):
        return (ray.train.Checkpoint if self.via == "train" else ray.tune.Checkpoint).from_directory(str(directory))

    def report(self, metrics: dict[str, Any], checkpoint) -> None:
        (ray.train.report if self.via == "train" else ray.tune.report)(metrics, checkpoint=checkpoint)


class RayHooks(Hooks):
    cache_data = True  # a reused trial process builds each data setting once

    def __init__(self, session: Session):
        self.session = session
        self.rank, self.world_size = session.rank, session.world_size

    def device(self, cfg) -> torch.device:
        if self.session.via == "train":
            return ray.train.torch.get_device()
        if not self.session.gpus and cfg.run.device == "auto":
            return torch.device("cpu")  # an in-process trial that holds no GPU leaves the node's GPUs to the trials that do
        device = super().device(cfg)  # in-process on a GPU share: Ray's CUDA_VISIBLE_DEVICES names the trial's GPU
        return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" and device.index is None else device

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model) if self.world_size > 1 else model

    def wrap_loader(self, loader):
        return ray.train.torch.prepare_data_loader(loader, move_to_device=False) if self.world_size > 1 else loader

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ckpt = self.session.checkpoint(checkpoint_dir) if checkpoint_dir else None
        self.session.report({**metrics, EPOCHS_DONE: metrics["epoch"] + 1}, ckpt)


def _threads(cpus: float) -> None:
    n = max(1, int(cpus))
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def _gpu_share(cfg, share: float, device: torch.device):
    """A worker (or in-process trial) on a fraction of a GPU (trials packed on it) keeps to that fraction
    of its memory: the caching allocator is capped there (a trial that needs more fails alone, out of
    memory, instead of starving the trials beside it), and the device pipeline's default budget is its share."""
    from raylg.data.device import DEFAULT_FRACTION

    torch.cuda.set_per_process_memory_fraction(share, device)  # device: indexed (RayHooks.device; torch 2.11 needs it)
    if cfg.data.device_budget_mib == 0:
        total = torch.cuda.get_device_properties(device).total_memory
        cfg = config_lib.apply_overrides(cfg, {"data.device_budget_mib": DEFAULT_FRACTION * share * total / 2**20})
    return cfg


_loops_in_process = 0


def _process_marks() -> dict[str, float]:
    """This process's start and its raylg imports, for the breakdown of a trial's start; none when
    an earlier loop in this process (a reused actor) already paid them."""
    import psutil

    global _loops_in_process
    _loops_in_process += 1
    if _loops_in_process > 1:
        return {}
    return {"process_start": psutil.Process().create_time(), "import_start": raylg.IMPORT_STARTED, "imported": IMPORTED}


def train_loop(config: dict[str, Any], hooks_cls: type[RayHooks] = RayHooks) -> None:
    """Per-worker entry. config: {"cfg": flat run config, "run_dir", "cpus", "report_to": "train" | "tune",
    "tracking": {"uri", "experiment_id", "parent_id", "trial_id", "tags"} | None, "marks": {name: time} of the
    trial's driver (raylg.timing)}."""
    timing.reset(**_process_marks(), **config.get("marks", {}))
    timing.mark("loop_start")
    _threads(config.get("cpus", 1))
    share = config.get("gpus", 0.0)
    session = Session(config.get("report_to", "train"), share)
    hooks = hooks_cls(session)
    cfg = config_lib.unflatten(config["cfg"])
    device = hooks.device(cfg) if share and torch.cuda.is_available() else None
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)  # a 1-worker run has no torch backend to do it
        if share < 1:
            cfg = _gpu_share(cfg, share, device)
    if storage.is_s3(cfg.teacher.path):  # a published teacher: copied once into this node's cache
        cfg = config_lib.apply_overrides(cfg, {"teacher.path": teachers.fetch(storage.parent(cfg.teacher.path))})
    callbacks = []
    tr = config.get("tracking")
    if tr and session.rank == 0:  # the trial's child run; the sweep's driver closes it
        from raylg.tracking import MlflowCallback, Tracker

        tracker = Tracker(tr["uri"])
        run_id = tracker.child_run(tr["experiment_id"], tr["parent_id"], tr["trial_id"], tr["tags"], config["cfg"])
        callbacks.append(MlflowCallback(tracker, run_id, owns_run=False, teacher_uri=config["cfg"].get("teacher.path", "")))
    checkpoint = session.get_checkpoint()
    if checkpoint is None:
        fit(cfg, config["run_dir"], hooks=hooks, callbacks=callbacks)
    else:
        with checkpoint.as_directory() as d:
            fit(cfg, config["run_dir"], hooks=hooks, resume_from=d, callbacks=callbacks)


# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s), and a run's end waits
# for the next poll: at 0.25 s a short trial ends about 2 s sooner (the controller and worker spend ~0.5% of a core more
# on polls). The controller reads it from the environment of the process that calls fit(); a value set there stands.
POLL_INTERVAL_ENV, POLL_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


def make_trainer(loop_config: dict[str, Any], *, name: str, storage: str, workers: int, cpus_per_worker: float,
                 gpus_per_worker: float, failures: int, callbacks: list | None = None,
                 loop: Callable[[dict], None] = train_loop, marks: dict[str, float] | None = None) -> DataParallelTrainer:
    """The Ray Train run of one trial: a TorchTrainer (DDP over gloo or NCCL), or with one worker Ray's
    trainer without a process group. `name` is the trial id, so a restarted trial finds its own run.
    With workers 0 the loop runs in the calling process (Tune's trial), on the GPU share that process holds."""
    os.environ.setdefault(POLL_INTERVAL_ENV, POLL_INTERVAL_S)
    use_gpu = gpus_per_worker > 0 and workers > 0
    scaling = ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})})
    run = RunConfig(name=name, storage_path=storage, callbacks=callbacks or [],
                    failure_config=FailureConfig(max_failures=failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val/top1",
                                                       checkpoint_score_order="max"))  # best + the latest (always kept)
    in_tune = loop_config.get("in_tune", False)
    loop_config = {**loop_config, "cpus": cpus_per_worker, "gpus": gpus_per_worker,
                   "report_to": "tune" if (in_tune and workers == 0) else "train",
                   "marks": {**(marks or {}), "trainer_built": time.time()}}
    if workers == 1:  # one rank needs no process group; Ray's plain backend also spares the controller torch's import (~1 s)
        return DataParallelTrainer(loop, train_loop_config=loop_config, backend_config=BackendConfig(),
                                   scaling_config=scaling, run_config=run)
    return TorchTrainer(loop, train_loop_config=loop_config, scaling_config=scaling,
                        run_config=run, torch_config=ray.train.torch.TorchConfig(backend="nccl" if use_gpu else "gloo"))
