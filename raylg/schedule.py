"""Learning rate as a pure function of the step: linear warmup, then cosine to a floor."""

from __future__ import annotations

import math


def lr_at(step: int, *, total_steps: int, warmup_steps: int, base_lr: float, warmup_lr: float, min_lr: float) -> float:
    """lr for optimizer step `step` (0-based) of `total_steps`.

    step 0 gives warmup_lr; step warmup_steps gives base_lr; the last step approaches min_lr.
    """
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def for_config(schedule, base_lr: float, steps_per_epoch: int):
    """Bind a ScheduleConfig: returns lr(step)."""
    total = schedule.epochs * steps_per_epoch
    warmup = round(schedule.warmup_epochs * steps_per_epoch)

    def lr(step: int) -> float:
        return lr_at(step, total_steps=total, warmup_steps=warmup, base_lr=base_lr,
                     warmup_lr=schedule.warmup_lr, min_lr=schedule.min_lr)

    return lr
