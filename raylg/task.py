"""The trainable module: the student plus every trainable guidance head.

`Task` is what the optimizer sees, what DDP wraps and what a checkpoint holds; the frozen
teacher (or the feature shards standing in for it) sits outside. forward(batch) returns the
dict of named loss terms the engine sums; predict(x) is the student alone.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from raylg.guidance.base import Context, TeacherOut
from raylg.guidance.locality import LocalityGuidance
from raylg.models import ModelError, block_channels, create_classifier, default_layer_map, forward_with_blocks, resolve_blocks as check_blocks

TargetFn = Callable[[dict], TeacherOut]


class Task(nn.Module):
    def __init__(self, student: nn.Module, terms: dict[str, nn.Module] | None = None, targets: TargetFn | None = None):
        super().__init__()
        self.student = student
        self.terms = nn.ModuleDict(terms or {})
        self.blocks = sorted({b for t in self.terms.values() for b in getattr(t, "student_blocks", [])})
        # a plain attribute (not a submodule): the teacher is never trained, saved or DDP-wrapped
        self.__dict__["targets"] = targets

    def forward(self, batch: dict) -> dict:
        x, y = batch["image"], batch["label"]
        if self.blocks:
            logits, feats = forward_with_blocks(self.student, x, self.blocks)
            features = dict(zip(self.blocks, feats))
        else:
            logits, features = self.student(x), {}
        teacher = self.targets(batch) if (self.targets is not None and len(self.terms)) else None
        ctx = Context(batch=batch, logits=logits, features=features, teacher=teacher)
        losses = {"ce": F.cross_entropy(logits, y)}
        stats: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            losses[name], term_stats = term(ctx)
            stats.update({f"{name}_{k}": v for k, v in term_stats.items()})
        return {"losses": losses, "stats": stats}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def param_groups(task: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms (any 1-D parameter), tokens and position embeddings
    (the student's timm `no_weight_decay()` names); aligner convs decay like the reference."""
    skip_names = set()
    student = getattr(task, "student", None)
    if student is not None and hasattr(student, "no_weight_decay"):
        skip_names = {f"student.{n}" for n in student.no_weight_decay()}
    decay, no_decay = [], []
    for name, p in task.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip_names or name.endswith(("pos_embed", "cls_token", "dist_token")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(task: nn.Module, optim) -> torch.optim.Optimizer:
    groups = param_groups(task, optim.weight_decay)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))


def resolve_blocks(cfg, student: nn.Module) -> list[int]:
    """The guided blocks: the config's map or the student's default, checked against its depth."""
    g = cfg.guidance.locality
    blocks = list(g.student_blocks) or default_layer_map(cfg.model.name)
    if len(blocks) != len(g.teacher_stages):
        raise ModelError(f"guidance.locality: {len(blocks)} student blocks {blocks} for {len(g.teacher_stages)} "
                         f"teacher stages {g.teacher_stages}; give one block per stage")
    try:
        return check_blocks(student, blocks)
    except ModelError as e:
        raise ModelError(f"guidance.locality.student_blocks {blocks}: {e}") from None


def build_task(cfg, *, in_chans: int, num_classes: int, teacher_channels: list[int] | None = None,
               targets: TargetFn | None = None) -> Task:
    """Student first (so its init depends on the seed alone), then guidance heads."""
    student = create_classifier(cfg.model, img_size=cfg.data.img_size, in_chans=in_chans, num_classes=num_classes)
    terms: dict[str, nn.Module] = {}
    if teacher_channels is not None:
        g = cfg.guidance.locality
        blocks = resolve_blocks(cfg, student)
        bad = [s for s in g.teacher_stages if not 0 <= s < len(teacher_channels)]
        if bad:
            raise ModelError(f"guidance.locality.teacher_stages: {bad} out of range; the teacher has {len(teacher_channels)} stages")
        terms["lg"] = LocalityGuidance(blocks, block_channels(student, blocks), list(g.teacher_stages),
                                       [teacher_channels[s] for s in g.teacher_stages], beta=g.beta)
    return Task(student, terms, targets)
