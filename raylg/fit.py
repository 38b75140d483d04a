"""One training run: data, task, optimizer, epochs, checkpoints, metrics.

`fit` is the whole per-process loop. It runs unchanged in a plain process (jobs/train.py)
and in a Ray Train worker: the launcher passes `Hooks` that wrap the model and loaders
(DDP, sharding) and receive each epoch's metrics and checkpoint, and `Callback`s that record
the run (raylg.tracking.MlflowCallback). Nothing here imports Ray or MLflow.

A run directory holds:
    config.yaml          the resolved config          data.json      split sizes, fingerprints
    metrics.jsonl        one line per epoch           summary.json   best/final figures
    checkpoints/last/    checkpoints/best/            student.safetensors (best student alone)
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from raylg import (
    checkpoint,
    config as config_lib,
    data,
    engine,
    precision as precision_lib,
    schedule,
    teacher as teacher_lib,
    timing,
)
from raylg.data import device as device_data
from raylg.task import build_optimizer, build_task

# fields that may differ between a run and its resume
RESUME_IGNORES = ("run.resume", "run.progress", "data.num_workers", "data.eval_batch_size", "run.device",
                  "data.device_budget_mib", "run.log_every", "run.compile")


class ResumeError(RuntimeError):
    pass


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Callback:
    """What records a run (raylg.tracking.MlflowCallback): fit() calls these on rank 0 only."""

    def on_start(self, cfg, info: dict[str, Any]) -> None:
        """Before the first epoch; info is what the run wrote to data.json (splits with their
        fingerprints, the teacher's arch and sha256, what it resolved on its device)."""

    def on_epoch(self, row: dict[str, Any]) -> None:
        """Each epoch's metrics row (as metrics.jsonl has it), before the launcher's report."""

    def on_end(self, summary: dict[str, Any] | None, status: str, error: str = "") -> None:
        """status FINISHED (with the summary), FAILED or KILLED (summary None, error its first line)."""


class Hooks:
    """What a launcher gives fit(): a plain single process by default."""

    rank, world_size = 0, 1
    cache_data = False  # keep built datasets for later runs in this process (fit.build_data)

    def device(self, cfg) -> torch.device:
        want = cfg.run.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(want)

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def wrap_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        pass

    def resolved(self, params: dict[str, str]) -> None:
        """What the run resolved on its device, as flat params ({"run.precision_resolved": "bf16",
        "data.pipeline_resolved": "device"}); called once, on rank 0, before the first epoch."""


@dataclass
class Setup:
    bundle: Any
    task: torch.nn.Module
    targets: Any
    teacher_card: dict | None


_bundles: dict[str, Any] = {}  # data config -> its built bundle, for the runs that follow in this process
KEEP_BUNDLES = 2


def build_data(data_cfg, cache: bool = False):
    """data.build; with cache, once per data config in a process: a sweep's trials that reuse a
    process (Tune reuses a trial's actor for the next trial) find their split built. Bundles are
    read-only to a run. Without cache (a plain run) the data is read afresh."""
    if not cache:
        return data.build(data_cfg)
    key = json.dumps(dataclasses.asdict(data_cfg), sort_keys=True, default=str)
    if key not in _bundles:
        while len(_bundles) >= KEEP_BUNDLES:
            _bundles.pop(next(iter(_bundles)))
        _bundles[key] = data.build(data_cfg)
    return _bundles[key]


def setup(cfg, cache_data: bool = False) -> Setup:
    """Data and the task (student + guidance heads) on the CPU, teacher checked and loaded."""
    bundle = build_data(cfg.data, cache_data)
    timing.mark("data")
    targets, card, channels = None, None, None
    if cfg.guidance.locality.source == "shards":  # precomputed maps: no teacher is built or loaded
        from raylg import features

        targets, card = features.for_run(cfg, bundle)
        channels = card["stage_channels"]
    elif cfg.teacher.path:
        model, card = teacher_lib.load(cfg.teacher.path, fingerprint=bundle.fingerprint("train"), num_classes=bundle.num_classes)
        if card["img_size"] != cfg.teacher.img_size:
            raise teacher_lib.TeacherError(f"teacher.img_size is {cfg.teacher.img_size} but teacher {cfg.teacher.path!r} "
                                           f"was trained at {card['img_size']}px")
        targets = teacher_lib.OnlineTeacher(model, cfg.teacher.img_size, cfg.teacher.bn_mode)
        channels = card["stage_channels"]
    if targets is not None:
        timing.mark("teacher")
    torch.manual_seed(cfg.run.seed)  # the student's init depends on the seed alone
    task = build_task(cfg, in_chans=bundle.in_chans, num_classes=bundle.num_classes, teacher_channels=channels, targets=targets)
    if cfg.run.init_from:  # the student from other weights (e.g. a self-supervised stage), checked before training
        from raylg import init_from

        init_from.load_student(task.student, cfg.run.init_from, model_name=cfg.model.name, num_classes=bundle.num_classes)
    timing.mark("task")
    return Setup(bundle, task, targets, card)


def _loader(dataset, batch_size: int, cfg, *, train: bool, seed: int) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=cfg.data.num_workers,
                      drop_last=train and len(dataset) >= batch_size, generator=g,
                      persistent_workers=cfg.data.num_workers > 0, pin_memory=torch.cuda.is_available())


def _set_epoch(loader, seed: int, epoch: int) -> None:
    """Shuffle order and loader-worker seeds depend on (seed, epoch) alone, so a resumed run
    sees the batches an uninterrupted one would. Under DDP the launcher's DistributedSampler
    shards the data and is told the epoch. Device-resident data is told the epoch alone."""
    if isinstance(loader, device_data.DeviceTrainData):
        loader.set_epoch(epoch)
        return
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar over the epoch's steps when run.progress is on and stderr is a terminal."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def check_resume(cfg, run_dir: Path) -> Path:
    last = checkpoint.find(run_dir / "checkpoints" / "last")
    if last is None:
        raise ResumeError(f"run.resume is set but {str(run_dir)!r} holds no checkpoint (looked for checkpoints/last/)")
    saved = checkpoint.read_config(last)
    diff = config_lib.diff(saved, cfg, ignore=RESUME_IGNORES)
    if diff:
        lines = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ResumeError(f"cannot resume {str(run_dir)!r} with a different config ({lines})")
    return last


def fit(cfg, run_dir: str | Path, *, hooks: Hooks | None = None, resume_from: str | Path | None = None,
        callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train cfg in run_dir; returns the summary. resume_from: a checkpoint directory to continue."""
    hooks = hooks or Hooks()
    callbacks = list(callbacks) if hooks.rank == 0 else []
    try:
        summary = _fit(cfg, run_dir, hooks, resume_from, callbacks)
    except BaseException as e:
        status, error = ("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"), f"{type(e).__name__}: {e}"
        for cb in callbacks:
            try:
                cb.on_end(None, status, error.splitlines()[0][:400] if error else "")
            except Exception as cb_error:  # the run's own error is the one to see
                print(f"warning: {type(cb).__name__}.on_end failed: {cb_error}", file=sys.stderr)
        raise
    for cb in callbacks:
        cb.on_end(summary, "FINISHED")
    return summary


def _fit(cfg, run_dir: str | Path, hooks: Hooks, resume_from, callbacks: list[Callback]) -> dict[str, Any]:
    run_dir = Path(run_dir)
    main = hooks.rank == 0
    if not any(n == "loop_start" for n, _ in timing.marks()):  # a plain run: fit is the loop's start
        timing.reset()
    timing.mark("fit_start")
    if cfg.run.resume and resume_from is None:
        resume_from = check_resume(cfg, run_dir)
    device = hooks.device(cfg)
    s = setup(cfg, cache_data=hooks.cache_data)
    prec = precision_lib.resolve(cfg.run.precision, device, warn=main)
    pipe = device_data.plan(cfg.data, s.bundle, device)  # refuses data.pipeline: device that cannot be, naming why
    resolved = {"run.precision_resolved": prec.precision, "data.pipeline_resolved": pipe.pipeline}
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, run_dir / "config.yaml")
        (run_dir / "data.json").write_text(json.dumps(
            {"in_chans": s.bundle.in_chans, "num_classes": s.bundle.num_classes, "splits": s.bundle.describe(),
             "fingerprint": s.bundle.fingerprint("train"),
             "teacher": None if s.teacher_card is None else {k: s.teacher_card[k] for k in ("arch", "sha256", "val_top1")},
             "resolved": resolved, "precision": prec.as_dict(), "pipeline": pipe.describe(), "device": str(device)},
            indent=2))
        hooks.resolved(resolved)
    task = s.task.to(device)
    for cb in callbacks:  # rank 0 only (fit), which wrote data.json
        cb.on_start(cfg, json.loads((run_dir / "data.json").read_text()))
    if callbacks:
        timing.mark("tracking")
    if s.targets is not None:
        s.targets.to(device)
    optimizer = build_optimizer(task, cfg.optim)
    per_worker = max(1, cfg.optim.batch_size // hooks.world_size)
    if pipe.pipeline == "device":
        train_loader = device_data.DeviceTrainData(s.bundle.train, pipe.program, device, batch_size=per_worker,
                                                   seed=cfg.run.seed, rank=hooks.rank, world_size=hooks.world_size)
        val_loader = _device_eval(s.bundle.val, cfg, device, pipe, hooks.rank, hooks.world_size)
    else:
        train_loader = hooks.wrap_loader(_loader(s.bundle.train, per_worker, cfg, train=True, seed=cfg.run.seed))
        val_loader = None
    if val_loader is None:
        val_loader = hooks.wrap_loader(_loader(s.bundle.val, cfg.data.eval_batch_size, cfg, train=False, seed=cfg.run.seed))
    steps = len(train_loader)
    if cfg.run.max_train_batches:
        steps = min(steps, cfg.run.max_train_batches)
    if steps == 0:
        raise ValueError(f"no training batches: {len(s.bundle.train)} training images for batch size {per_worker}")
    lr_at = schedule.for_config(cfg.schedule, cfg.optim.lr, steps)

    start_epoch, step, best = 0, 0, {"val/top1": -1.0, "epoch": -1}
    if resume_from is not None:
        meta = checkpoint.load(resume_from, module=task, optimizer=optimizer, map_location=device)
        start_epoch, step = meta["epoch"] + 1, meta["step"]
        best = meta["metrics"].get("best", best)
    else:
        seed_all(cfg.run.seed + hooks.rank)  # the same training randomness whatever heads were built
    compile_s = None
    if cfg.run.compile:  # compiled here, on one batch, so the first epoch's step time is the step's alone
        from raylg import compiled

        compile_s = compiled.warm_up(compiled.compile_task(task), train_loader, device, prec.precision)
        timing.mark("compile")
        if main:
            print(f"run.compile: compiled the task's forward and backward in {compile_s:.1f}s", flush=True)
    model = hooks.wrap_model(task)
    metrics_path = run_dir / "metrics.jsonl"
    if main and metrics_path.exists():  # keep only the epochs the checkpoint covers
        kept = [l for l in metrics_path.read_text().splitlines() if l and json.loads(l)["epoch"] < start_epoch]
        metrics_path.write_text("".join(l + "\n" for l in kept))

    timing.mark("loaders")
    row: dict[str, Any] = {}
    finished = None
    for epoch in range(start_epoch, cfg.schedule.epochs):
        t0 = time.perf_counter()
        _set_epoch(train_loader, cfg.run.seed, epoch)
        bar = _progress(steps, f"epoch {epoch + 1}/{cfg.schedule.epochs}", main and cfg.run.progress)
        train_m, step = engine.train_one_epoch(model, train_loader, optimizer, lr_at=lr_at, step=step, device=device,
                                               precision=prec.precision, clip_grad=cfg.optim.clip_grad,
                                               max_batches=cfg.run.max_train_batches, progress=bar,
                                               log_every=cfg.run.log_every)
        if bar is not None:
            bar.close()
        val_m = engine.evaluate(model, val_loader, device=device, precision=prec.precision)
        timing.mark(f"epoch_{epoch}")
        row = {"epoch": epoch, "step": step, **train_m, **val_m, "epoch_time_s": time.perf_counter() - t0,
               "world_size": hooks.world_size}
        if compile_s is not None and epoch == start_epoch:
            row["compile_time_s"] = compile_s
        is_best = row["val/top1"] > best["val/top1"]
        if is_best:
            best = {"val/top1": row["val/top1"], "val/top5": row["val/top5"], "epoch": epoch}
        row["best/val/top1"] = best["val/top1"]
        ckpt = None
        if main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            ckpt = checkpoint.save(run_dir / "checkpoints" / "last", module=task, optimizer=optimizer, cfg=cfg,
                                   epoch=epoch, step=step, metrics={"row": row, "best": best})
            if is_best:
                checkpoint.save(run_dir / "checkpoints" / "best", module=task, optimizer=None, cfg=cfg,
                                epoch=epoch, step=step, metrics={"row": row, "best": best})
            print(_line(row), flush=True)
            if epoch == cfg.schedule.epochs - 1:  # the last report carries the best student's test figures
                finished = _finish(cfg, run_dir, task, s.bundle, device, prec.precision, pipe)
                timing.mark("finish")
                row = {**row, **{k: v for k, v in finished.items() if k.startswith("test/")}}
            for cb in callbacks:  # before the report: ASHA may end a trial inside it
                cb.on_epoch(row)
            timing.write(run_dir / "timing.json")  # each epoch: ASHA may end the trial inside the report
        hooks.report(row, ckpt)

    summary = {"best": best, "last": row, "epochs": cfg.schedule.epochs, "resolved": resolved}
    if compile_s is not None:
        summary["compile_time_s"] = compile_s
    if main:
        summary.update(finished if finished is not None else _finish(cfg, run_dir, task, s.bundle, device, prec.precision, pipe))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        timing.mark("fit_end")
        timing.write(run_dir / "timing.json")
    return summary


def _device_eval(dataset, cfg, device, pipe, rank: int, world_size: int):
    """An eval split cached on the device (the loader's eval transform, exact) when it fits what the
    training split left of the budget; None: the loader evaluates it."""
    need = device_data.DeviceEvalData.nbytes_for(dataset, _chans(dataset))
    if need == 0 or pipe.need_bytes + need > pipe.budget_bytes:
        return None
    return device_data.DeviceEvalData(dataset, device, batch_size=cfg.data.eval_batch_size, rank=rank, world_size=world_size)


def _chans(dataset) -> int:
    return 1 if dataset.split.mode == "L" else 3


def _finish(cfg, run_dir: Path, task, bundle, device, precision: str = "fp32", pipe=None) -> dict[str, Any]:
    """Export the best student alone; evaluate it on the test split when the set has one."""
    best_dir = checkpoint.find(run_dir / "checkpoints" / "best")
    if best_dir is None:
        return {}
    checkpoint.load(best_dir, module=task, restore_rng=False, map_location=device)
    out = {"student": str(checkpoint.export_weights(task.student, run_dir / "student.safetensors",
                                                     metadata={"model": cfg.model.name}))}
    if bundle.test is not None:
        loader = _device_eval(bundle.test, cfg, device, pipe, 0, 1) if pipe is not None and pipe.pipeline == "device" else None
        if loader is None:
            loader = _loader(bundle.test, cfg.data.eval_batch_size, cfg, train=False, seed=0)
        out.update(engine.evaluate(task, loader, device=device, precision=precision, prefix="test",
                                   across_ranks=False))  # rank 0 alone, on the whole test split
    return out


def _line(row: dict[str, Any]) -> str:
    terms = " ".join(f"{k[6:]} {v:.4f}" for k, v in row.items() if k.startswith("train/") and "_mse" not in k)
    return (f"epoch {row['epoch'] + 1}: {terms} | val top1 {row['val/top1']:.2f} top5 {row['val/top5']:.2f} "
            f"| lr {row['lr']:.2e} | {row['images_per_s']:.0f} img/s | {row['epoch_time_s']:.1f}s")
