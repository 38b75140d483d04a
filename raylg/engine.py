"""Train one epoch / evaluate. Plain PyTorch; the loss is a dict of named terms, summed here.

The engine never learns which guidance is on: the task returns {"ce": ..., "lg": ..., ...}
and every term is summed, logged and averaged over the epoch the same way. Under
torch.distributed (DDP), metrics are summed over ranks so every rank reports the same numbers.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable

import torch
import torch.distributed as dist


class NonFiniteLoss(FloatingPointError):
    """A loss term went NaN/inf; raised before the optimizer step so weights stay finite."""


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _all_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def train_one_epoch(model: torch.nn.Module, loader: Iterable[dict], optimizer: torch.optim.Optimizer, *,
                    lr_at: Callable[[int], float], step: int, device: torch.device, precision: str = "fp32",
                    clip_grad: float = 0.0, max_batches: int = 0, progress=None) -> tuple[dict[str, float], int]:
    """One pass over loader; returns (epoch metrics, next global step).

    model(batch) must return {"losses": {name: scalar}, "stats": {name: scalar}} (stats are logged only).
    Metrics: train/<term> and train/loss (sample-weighted means), train/<stat>, lr (last), images_per_s.
    """
    model.train()
    sums: dict[str, float] = {}
    seen, lr, t0 = 0, 0.0, time.perf_counter()
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        batch = _to(batch, device)
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with autocast(device, precision):
            out = model(batch)
        losses = out["losses"]
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            terms = {k: float(v) for k, v in losses.items()}
            raise NonFiniteLoss(f"non-finite loss at step {step} (lr {lr:.3g}): terms {terms}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        n = batch["label"].shape[0]
        seen += n
        step += 1
        for k, v in losses.items():
            sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + float(v.detach()) * n
        for k, v in out.get("stats", {}).items():
            sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + float(v) * n
        sums["train/loss"] = sums.get("train/loss", 0.0) + float(loss.detach()) * n
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{float(loss):.3f}", lr=f"{lr:.2e}", refresh=False)
    elapsed = time.perf_counter() - t0
    sums["_seen"] = float(seen)
    sums = _all_sum(sums, device)
    total = max(sums.pop("_seen"), 1.0)
    metrics = {k: v / total for k, v in sums.items()}
    metrics["lr"] = lr
    metrics["images_per_s"] = total / elapsed if elapsed > 0 else 0.0
    return metrics, step


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable[dict], *, device: torch.device, precision: str = "fp32",
             prefix: str = "val", across_ranks: bool = True) -> dict[str, float]:
    """Top-1/top-5 and CE of the model's prediction (task.predict: the student alone).
    across_ranks: sum over DDP ranks (each saw its shard); False when one rank evaluates alone."""
    net = _unwrap(model)
    net.eval()
    correct1 = correct5 = loss = seen = 0.0
    for batch in loader:
        batch = _to(batch, device)
        with autocast(device, precision):
            logits = net.predict(batch["image"]).float()
        y = batch["label"]
        loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        correct1 += float(hit[:, 0].sum())
        correct5 += float(hit.any(dim=1).sum())
        seen += y.shape[0]
    s = {"c1": correct1, "c5": correct5, "loss": loss, "n": seen}
    if across_ranks:
        s = _all_sum(s, device)
    n = max(s["n"], 1.0)
    return {f"{prefix}/top1": 100.0 * s["c1"] / n, f"{prefix}/top5": 100.0 * s["c5"] / n, f"{prefix}/loss": s["loss"] / n}
