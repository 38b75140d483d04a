"""run.compile: the task's forward through torch.compile, compiled before the first epoch.

torch.compile compiles on the first call, so a compiled run's first step would carry the whole
compile. `warm_up` makes that call itself, on one training batch (forward and backward, the
graphs the steps use), then puts back everything the call touched: parameters and buffers,
gradients and the RNG streams (torch's, Python's, numpy's). The run then trains exactly the batches and randomness an eager
run would, and its compile time is a figure of its own (`compile_time_s` in the first epoch's
metrics and in summary.json), apart from the step time.

The task is compiled in place (`nn.Module.compile`), so its state_dict keys, checkpoints and
DDP wrapping are those of an eager run. Evaluation (task.predict) stays eager.
"""

from __future__ import annotations

import random
import time
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader

from raylg import engine


def compile_task(task: torch.nn.Module, **options) -> torch.nn.Module:
    """Compile the task's forward in place; returns the task. Dynamo's caches are cleared first: a
    process that runs trial after trial (Tune reuses it) would otherwise pile up compiled variants
    of Task.forward until dynamo's per-function limit sends later trials back to eager."""
    torch._dynamo.reset()
    task.compile(**options)
    return task


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def _set_rng_state(state, device: torch.device) -> None:
    cpu, cuda, py, npy = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
    random.setstate(py)
    np.random.set_state(npy)


def _first_batch(batches: Iterable[dict]) -> dict:
    """One training batch. A DataLoader's is collated from its dataset's first items, without an
    iterator: starting one would draw its workers' seeds from the loader's generator and start
    (persistent) workers before the run's first epoch sets them."""
    if isinstance(batches, DataLoader):
        n = min(batches.batch_size or 1, len(batches.dataset))
        return batches.collate_fn([batches.dataset[i] for i in range(n)])
    return next(iter(batches))


def warm_up(task: torch.nn.Module, batches: Iterable[dict], device: torch.device, precision: str) -> float:
    """Compile by running one training step's forward and backward on the first batch of
    `batches` (no optimizer step), then restore the task's state, its gradients and the RNG.
    Returns the seconds it took (the compile time; the step itself is a small part of it)."""
    saved = {k: v.detach().clone() for k, v in task.state_dict(keep_vars=True).items()}
    rng = _rng_state(device)
    was_training = task.training
    t0 = time.perf_counter()
    batch = engine._to(_first_batch(batches), device)
    task.train()
    engine.forward_losses(task, batch, device=device, precision=precision)[0].backward()  # the step's own forward
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        for k, v in task.state_dict(keep_vars=True).items():
            v.copy_(saved[k])
    for p in task.parameters():
        p.grad = None
    _set_rng_state(rng, device)
    task.train(was_training)
    return seconds
