"""Train one epoch / evaluate. Plain PyTorch; the loss is a dict of named terms, summed here.

The engine never learns which guidance is on: the task returns {"ce": ..., "lg": ..., ...}
and every term is summed, logged and averaged over the epoch the same way. Under
torch.distributed (DDP), metrics are summed over ranks so every rank reports the same numbers.

No host synchronisation per step: each step's loss terms and stats are added, in float64, to
one vector on the device (the same sums, bit for bit, as adding Python floats), and reach the
host once per log interval (``log_every`` steps) and at the end of the epoch. The NaN guard
works the same way (`NanGuard`): each step records on the device whether its loss was finite
and, for the first step that was not, the step and its terms; every log interval the host
reads that record once. A non-finite step rolls the trainable weights, their buffers and the
optimizer state back to the last check (a device copy taken at each check; none of the
updates in between reach a checkpoint, the caller or another rank) and raises NonFiniteLoss
naming the step, its lr and its terms. Under DDP the check's flag is all-reduced, so every
rank rolls back and raises together.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from raylg import precision as precision_lib

HOST_KEYS = ("index",)  # batch entries that stay on the host (feature shards gather by them there)


class NonFiniteLoss(FloatingPointError):
    """A loss term went NaN/inf; the weights and optimizer state were rolled back to finite values."""


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) and k not in HOST_KEYS else v)
            for k, v in batch.items()}


def autocast(device: torch.device, precision: str):
    """bf16 autocast for "bf16"; none for "fp32"; "auto" is resolved for the device first."""
    if precision == "auto":
        precision = precision_lib.resolve("auto", device).precision
    return precision_lib.autocast(device, precision)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not _distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


class NanGuard:
    """Device-side record of non-finite steps, read every `every` steps, with rollback.

    record(step, loss, terms) each step: no sync. check() at each log interval: one device->host
    read (and one all_reduce under DDP); raises NonFiniteLoss after restoring the snapshot taken
    at the previous check."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.module, self.optimizer, self.device = _unwrap(model), optimizer, device
        self.names: list[str] = []
        self.first_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.first_terms = torch.zeros(0, dtype=torch.float64, device=device)
        self.lrs: dict[int, float] = {}
        self.checked_step = None
        self._snap: dict | None = None

    def name_terms(self, names: list[str]) -> None:
        self.names = list(names)
        self.first_terms = torch.zeros(len(names), dtype=torch.float64, device=self.device)

    def _tensors(self):
        return [t for t in list(self.module.parameters()) + list(self.module.buffers())]

    def snapshot(self, step: int) -> None:
        """Copy the weights, buffers and optimizer state (into buffers kept between checks)."""
        live = self._tensors()
        if self._snap is None or len(self._snap["tensors"]) != len(live):
            self._snap = {"tensors": [t.detach().clone() for t in live], "state": {}}
        else:
            with torch.no_grad():
                for s, t in zip(self._snap["tensors"], live):
                    s.copy_(t.detach(), non_blocking=True)
        state = {}
        for p, st in self.optimizer.state.items():
            old = self._snap["state"].get(p, {})
            kept = {}
            for k, v in st.items():
                if torch.is_tensor(v):
                    buf = old.get(k)
                    if buf is None or buf.shape != v.shape or buf.dtype != v.dtype or buf.device != v.device:
                        buf = v.detach().clone()
                    else:
                        buf.copy_(v.detach(), non_blocking=True)
                    kept[k] = buf
                else:
                    kept[k] = v
            state[p] = kept
        self._snap["state"] = state
        self.checked_step = step
        self.lrs.clear()

    def restore(self) -> None:
        with torch.no_grad():
            for s, t in zip(self._snap["tensors"], self._tensors()):
                t.copy_(s)
            for p in list(self.optimizer.state):
                saved = self._snap["state"].get(p)
                if saved is None:  # state created after the snapshot: back to "never stepped"
                    del self.optimizer.state[p]
                    continue
                st = self.optimizer.state[p]
                for k, v in saved.items():
                    if torch.is_tensor(v) and torch.is_tensor(st.get(k)):
                        st[k].copy_(v)
                    else:
                        st[k] = v.clone() if torch.is_tensor(v) else v

    def record(self, step: int, lr: float, loss: torch.Tensor, terms: torch.Tensor) -> None:
        self.lrs[step] = lr
        newly = (~torch.isfinite(loss)) & (self.first_step < 0)
        self.first_step = torch.where(newly, step, self.first_step)
        self.first_terms = torch.where(newly, terms, self.first_terms)

    def check(self, step: int, extra: torch.Tensor | None = None, *, snapshot: bool = True) -> list[float] | None:
        """Raise NonFiniteLoss (after the rollback) if any step since the last check, on any rank,
        was non-finite; else take a new snapshot (unless snapshot=False: the epoch's last check).
        Returns `extra`, read in the same transfer."""
        parts = [self.first_step.to(torch.float64).view(1), self.first_terms]
        if extra is not None:
            parts.append(extra.to(torch.float64).view(-1))
        flat = torch.cat(parts)
        if _distributed():
            bad = (self.first_step >= 0).to(torch.int32).view(1)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            flat = torch.cat([flat, bad.to(torch.float64)])
        host = flat.tolist()  # the one sync of the interval
        first = int(host[0])
        any_bad = first >= 0 or (_distributed() and host[-1] > 0)
        if any_bad:
            self.restore()
            back = f"rolled back to step {self.checked_step} (the last check; checks every run.log_every steps)"
            if first >= 0:
                terms = dict(zip(self.names, host[1:1 + len(self.names)]))
                lr = self.lrs.get(first, float("nan"))
                raise NonFiniteLoss(f"non-finite loss at step {first} (lr {lr:.3g}): terms {terms}; weights and optimizer "
                                    f"state {back}")
            raise NonFiniteLoss(f"non-finite loss on another rank before step {step}; weights and optimizer state {back}")
        if snapshot:
            self.snapshot(step)
        return host[1 + len(self.names):len(host) - (1 if _distributed() else 0)] if extra is not None else None


def _scalar(v, device) -> torch.Tensor:
    """A loss term or stat as a float64 scalar on the device, with no host sync: a number is filled in on the
    device (torch.tensor(x, device=cuda) copies from host memory and waits), a host tensor is copied with
    non_blocking=True."""
    if torch.is_tensor(v):
        return v.detach().to(device=device, dtype=torch.float64, non_blocking=True).reshape(())
    return torch.full((), float(v), dtype=torch.float64, device=device)


def forward_losses(model: torch.nn.Module, batch: dict, *, device: torch.device,
                   precision: str) -> tuple[torch.Tensor, dict, dict]:
    """The first half of a training step: model(batch) under autocast -> (summed loss, loss terms, stats)."""
    with precision_lib.autocast(device, precision):
        out = model(batch)
    losses = out["losses"]
    return sum(losses.values()), losses, out.get("stats", {})


def apply_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                    clip_grad: float = 0.0) -> None:
    """The second half: backward, optional gradient-norm clipping, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()


def train_step(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, *, device: torch.device,
               precision: str = "fp32", clip_grad: float = 0.0) -> tuple[torch.Tensor, dict, dict]:
    """One training step (what train_one_epoch does per batch, without its bookkeeping): forward under
    autocast, sum the loss terms, backward, clip, step. Returns (loss, terms, stats); no host sync.
    precision is resolved ("fp32" or "bf16"); the benchmarks time exactly this."""
    loss, losses, stats = forward_losses(model, batch, device=device, precision=precision)
    apply_gradients(model, optimizer, loss, clip_grad)
    return loss, losses, stats


def train_one_epoch(model: torch.nn.Module, loader: Iterable[dict], optimizer: torch.optim.Optimizer, *,
                    lr_at: Callable[[int], float], step: int, device: torch.device, precision: str = "fp32",
                    clip_grad: float = 0.0, max_batches: int = 0, progress=None,
                    log_every: int = 50) -> tuple[dict[str, float], int]:
    """One pass over loader; returns (epoch metrics, next global step).

    model(batch) must return {"losses": {name: scalar}, "stats": {name: scalar}} (stats are logged only).
    Metrics: train/<term> and train/loss (sample-weighted means), train/<stat>, lr (last), images_per_s.
    precision: "fp32" | "bf16" (resolve "auto" with raylg.precision first; resolved here otherwise).
    """
    if precision == "auto":
        precision = precision_lib.resolve("auto", device).precision
    model.train()
    keys: list[str] | None = None
    acc: torch.Tensor | None = None
    guard = NanGuard(model, optimizer, device)
    guard.snapshot(step)  # the state a non-finite step of the first interval rolls back to
    seen, lr, t0 = 0, 0.0, time.perf_counter()
    since = 0
    interval_loss = None
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        batch = _to(batch, device)
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss, losses, stats = forward_losses(model, batch, device=device, precision=precision)
        if keys is None:
            keys = [f"train/{k}" for k in losses] + [f"train/{k}" for k in stats] + ["train/loss"]
            acc = torch.zeros(len(keys), dtype=torch.float64, device=device)
            interval_loss = torch.zeros((), dtype=torch.float64, device=device)
            guard.name_terms(list(losses))
        elif len(keys) != len(losses) + len(stats) + 1:
            raise ValueError(f"the task returned other loss terms or stats at step {step} than at the epoch's first step "
                             f"({sorted(losses) + sorted(stats)} vs {keys})")
        terms = torch.stack([_scalar(v, device) for v in losses.values()])
        row = torch.cat([terms, torch.stack([_scalar(v, device) for v in stats.values()]) if stats else terms[:0],
                         _scalar(loss, device).view(1)])
        guard.record(step, lr, row[-1], terms)
        apply_gradients(model, optimizer, loss, clip_grad)
        n = batch["label"].shape[0]
        seen += n
        step += 1
        since += 1
        acc += row * n  # float64: the same rounding as summing float(v) * n on the host
        interval_loss += row[-1]
        if progress is not None:
            progress.update(1)
        if since >= log_every:
            mean = guard.check(step, interval_loss / since)
            interval_loss.zero_()
            since = 0
            if progress is not None:
                progress.set_postfix(loss=f"{mean[0]:.3f}", lr=f"{lr:.2e}", refresh=False)
    sums: dict[str, float] = {}
    if keys is not None:
        guard.check(step, snapshot=False)
        sums = dict(zip(keys, acc.tolist()))  # the epoch's sums reach the host once
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
    across_ranks: sum over DDP ranks (each saw its shard); False when one rank evaluates alone.
    The sums stay on the device until the end (one transfer per evaluation)."""
    if precision == "auto":
        precision = precision_lib.resolve("auto", device).precision
    net = _unwrap(model)
    net.eval()
    acc = torch.zeros(3, dtype=torch.float64, device=device)  # correct1, correct5, loss
    seen = 0
    for batch in loader:
        batch = _to(batch, device)
        with precision_lib.autocast(device, precision):
            logits = net.predict(batch["image"]).float()
        y = batch["label"]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        acc += torch.stack([hit[:, 0].sum().to(torch.float64), hit.any(dim=1).sum().to(torch.float64),
                            torch.nn.functional.cross_entropy(logits, y, reduction="sum").to(torch.float64)])
        seen += y.shape[0]
    c1, c5, loss = acc.tolist()
    s = {"c1": c1, "c5": c5, "loss": loss, "n": float(seen)}
    if across_ranks:
        s = _all_sum(s, device)
    n = max(s["n"], 1.0)
    return {f"{prefix}/top1": 100.0 * s["c1"] / n, f"{prefix}/top5": 100.0 * s["c5"] / n, f"{prefix}/loss": s["loss"] / n}
