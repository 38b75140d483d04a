"""Distillation from the CNN teacher's logits: DeiT's distillation token, and soft logit KD.

- ``DistillationToken`` (Touvron et al., DeiT, hard distillation): the student is built as its
  distilled variant (an extra token with its own head, timm's ``VisionTransformerDistilled``);
  the term is CE(distillation head, argmax of the teacher's logits), weighted. The class head
  keeps the task's plain ``ce``. DeiT's hard-distillation loss is 0.5 * CE + 0.5 * CE_dist;
  raylg's total is CE + weight * CE_dist, so weight 1 is DeiT's loss times 2 (the same update
  under AdamW up to its eps; decay is decoupled from the loss). At evaluation the two heads'
  logits are averaged (``Task.predict``).
- ``LogitDistillation`` (Hinton et al.): tau^2 * KL(softmax(t / tau) || softmax(s / tau)),
  averaged over the batch, weighted; on the class head's logits.

Both need the teacher's logits (``TeacherOut.logits``): an online teacher with a classifier
head. Feature shards carry stage maps only; ``teacher_logit_classes`` tells them apart at
build time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raylg.guidance.base import Context


def teacher_logit_classes(targets) -> int:
    """How many classes the targets' logits have; 0 when they return none. Targets may say so
    themselves (``num_classes``); an online teacher answers through its model (timm convention:
    ``num_classes`` 0 = no classifier head); anything else (feature shards) has none."""
    if targets is None:
        return 0
    if hasattr(targets, "num_classes"):
        return int(targets.num_classes or 0)
    return int(getattr(getattr(targets, "model", None), "num_classes", 0) or 0)


def _teacher_logits(ctx: Context, term: str) -> torch.Tensor:
    if ctx.teacher is None or ctx.teacher.logits is None:
        raise RuntimeError(f"{term} needs the teacher's logits (an online teacher with a classifier head)")
    return ctx.teacher.logits


class DistillationToken(nn.Module):
    needs_dist_logits = True

    def __init__(self, weight: float):
        super().__init__()
        self.weight = float(weight)

    def forward(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if ctx.dist_logits is None:
            raise RuntimeError("the distillation-token term needs a distilled student (Context.dist_logits)")
        hard = _teacher_logits(ctx, "the distillation-token term").argmax(dim=1)
        ce = F.cross_entropy(ctx.dist_logits.float(), hard)
        # how often the teacher's hard labels are right on this (augmented) batch
        teacher_top1 = (hard == ctx.batch["label"]).float().mean() * 100.0
        return self.weight * ce, {"ce": ce.detach(), "teacher_top1": teacher_top1}


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(t / tau) || softmax(s / tau)), mean over the batch (fp32)."""
    s = F.log_softmax(student_logits.float() / tau, dim=1)
    t = F.log_softmax(teacher_logits.float() / tau, dim=1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * (tau * tau)


class LogitDistillation(nn.Module):
    def __init__(self, weight: float, tau: float = 4.0):
        super().__init__()
        self.weight, self.tau = float(weight), float(tau)

    def forward(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        kl = soft_kl(ctx.logits, _teacher_logits(ctx, "logit distillation"), self.tau)
        return self.weight * kl, {"kl": kl.detach()}
