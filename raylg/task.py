"""The trainable module: the student plus every trainable guidance head.

`Task` is what the optimizer sees, what DDP wraps and what a checkpoint holds; the frozen
teacher (or the feature shards standing in for it) sits outside. forward(batch) returns the
dict of named loss terms the engine sums ("ce" plus one per guidance term: "lg", "drloc",
"dist", "kd", "relvit_rel", "relvit_pos", "relvit_dist"; no "ce" when guidance.ce_weight is 0,
the self-supervised stage); predict(x) is the student alone (a distilled student's two heads
averaged).

The student runs once per step: the task asks that pass for the union of what its terms
need (block maps, the final token grid, the distillation head's logits).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from raylg.config import ConfigError
from raylg.guidance import (
    Context,
    DenseRelativeLocalization,
    DistillationToken,
    LocalityGuidance,
    LogitDistillation,
    PatchShuffle,
    TeacherOut,
    build_relvit_terms,
    teacher_logit_classes,
)
from raylg.models import (
    STUDENTS,
    ModelError,
    block_channels,
    create_classifier,
    default_layer_map,
    distilled_variant,
    forward_trunk,
    has_token_grid,
    resolve_blocks as check_blocks,
    student_family,
    token_grid,
)
from raylg.models.families import model_name

TargetFn = Callable[[dict], TeacherOut]


class Task(nn.Module):
    def __init__(self, student: nn.Module, terms: dict[str, nn.Module] | None = None, targets: TargetFn | None = None,
                 *, ce_weight: float = 1.0, prepare: Callable[[dict], dict] | None = None):
        super().__init__()
        self.student = student
        self.terms = nn.ModuleDict(terms or {})
        self.blocks = sorted({b for t in self.terms.values() for b in getattr(t, "student_blocks", [])})
        self.needs_tokens = any(getattr(t, "needs_tokens", False) for t in self.terms.values())
        self.ce_weight = float(ce_weight)  # 0: no CE term, the labels are never read
        # plain attributes (not submodules): the teacher is never trained, saved or DDP-wrapped;
        # prepare (RelViT's patch shuffle) rewrites the training batch before both passes
        self.__dict__["targets"] = targets
        self.__dict__["prepare"] = prepare

    def _student_pass(self, x: torch.Tensor):
        """(student output, block maps, token grid) from one pass; plain forward when no term needs more."""
        if not self.blocks and not self.needs_tokens:
            return self.student(x), {}, None
        feats, maps = forward_trunk(self.student, x, self.blocks)
        tokens = token_grid(self.student, feats) if self.needs_tokens else None
        return self.student.forward_head(feats), dict(zip(self.blocks, maps)), tokens

    def forward(self, batch: dict) -> dict:
        if self.prepare is not None:
            batch = self.prepare(batch)
        x = batch["image"]
        out, features, tokens = self._student_pass(x)
        logits, dist_logits = out if isinstance(out, tuple) else (out, None)  # a distilled student: (class, dist)
        teacher = self.targets(batch) if (self.targets is not None and len(self.terms)) else None
        ctx = Context(batch=batch, logits=logits, features=features, teacher=teacher, tokens=tokens, dist_logits=dist_logits)
        losses = {}
        if self.ce_weight > 0:
            ce = F.cross_entropy(logits, batch["label"])
            losses["ce"] = ce if self.ce_weight == 1.0 else self.ce_weight * ce
        stats: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            losses[name], term_stats = term(ctx)
            stats.update({f"{name}_{k}": v for k, v in term_stats.items()})
        return {"losses": losses, "stats": stats}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The student's logits; a distilled student's class and distillation heads averaged (DeiT)."""
        out = self.student(x)
        if isinstance(out, tuple):  # a distilled student in training mode returns both heads
            out = (out[0] + out[1]) / 2
        return out


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


def _check_teacher_logits(key: str, targets, num_classes: int) -> None:
    """Terms that learn from the teacher's logits need targets that return them, with the run's classes."""
    if targets is None:
        raise ConfigError(f"{key} > 0 needs the teacher's logits, but no teacher is loaded; set teacher.path")
    have = teacher_logit_classes(targets)
    if have == 0:
        raise ModelError(f"{key} > 0 needs the teacher's logits, but the teacher ({type(targets).__name__}) has no "
                         f"classifier head (feature shards carry stage maps only; use an online teacher)")
    if have != num_classes:
        raise ModelError(f"{key} > 0: the teacher's classifier has {have} classes but the run has {num_classes}")


def _token_grid_size(student: nn.Module, in_chans: int, img_size: int) -> tuple[int, int]:
    """(h, w) of the final token grid, from one image under no_grad (no RNG, no state change)."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            feats, _ = forward_trunk(student, torch.zeros(1, in_chans, img_size, img_size))
            h, w = token_grid(student, feats).shape[-2:]
    finally:
        student.train(was_training)
    return int(h), int(w)


def _drloc(cfg, student: nn.Module, in_chans: int) -> DenseRelativeLocalization:
    name = model_name(student)
    if not has_token_grid(student):
        raise ModelError(f"guidance.drloc: student {name!r} keeps no final patch-token grid (its features are the "
                         f"class tokens alone), so DRLoc cannot sample token pairs; use a ViT, DeiT, T2T-ViT, PVT or CCT")
    h, w = _token_grid_size(student, in_chans, cfg.data.img_size)
    if h * w < 2:
        raise ModelError(f"guidance.drloc: student {name!r} at {cfg.data.img_size}px has a {h}x{w} final token grid; "
                         f"DRLoc needs at least two tokens to predict offsets between")
    return DenseRelativeLocalization(block_channels(student, [-1])[0], cfg.guidance.drloc.weight, m=cfg.guidance.drloc.m)


def token_grid_students() -> list[str]:
    """raylg's students whose forward_features keep a final patch-token grid (DRLoc, RelViT)."""
    return [name for name in STUDENTS if student_family(name).tokens is not None]


def _relvit(cfg, student: nn.Module, in_chans: int) -> tuple[dict[str, nn.Module], PatchShuffle | None]:
    """RelViT's terms (those whose weight x factor > 0) and, with shuffle on, the patch shuffle."""
    name, rv = model_name(student), cfg.guidance.relvit
    if not has_token_grid(student):
        raise ModelError(f"guidance.relvit: student {name!r} keeps no final patch-token grid (its features are the "
                         f"class tokens alone), so RelViT has no patch tokens to relate; students that support it: "
                         f"{', '.join(token_grid_students())}")
    size = cfg.data.img_size
    h, w = _token_grid_size(student, in_chans, size)
    if h * w < 2:
        raise ModelError(f"guidance.relvit: student {name!r} at {size}px has a {h}x{w} final token grid; RelViT "
                         f"needs at least two tokens to relate")
    if rv.shuffle and (size % h or size % w):
        raise ModelError(f"guidance.relvit.shuffle: student {name!r} at {size}px has a {h}x{w} final token grid, "
                         f"which does not split the image into equal blocks to shuffle")
    terms = build_relvit_terms(rv, block_channels(student, [-1])[0], (h, w))
    return terms, (PatchShuffle((h, w)) if rv.shuffle else None)


def _freeze_class_head(student: nn.Module, in_chans: int, img_size: int) -> list[str]:
    """With no CE (and no KD) the class head gets no gradient: freeze what only forward_head's class
    output reaches (timm's head, CCT's pooling...), so DDP sees no unused parameters and the head
    stays at its init. Found by one backward from a detached feature leaf; returns the names."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            feats = student.forward_features(torch.zeros(1, in_chans, img_size, img_size))
        out = student.forward_head(feats.detach().requires_grad_(True))
        out = out[0] if isinstance(out, tuple) else out  # a distilled student: its class head only
        named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        student.train(was_training)
    frozen = [n for (n, p), g in zip(named, grads) if g is not None]
    for n, p in named:
        if n in frozen:
            p.requires_grad_(False)
    return frozen


def _check_something_trains(cfg, lg: bool) -> None:
    gd = cfg.guidance
    if gd.ce_weight > 0:
        return
    others = lg or gd.drloc.weight > 0 or gd.distill_token.weight > 0 or gd.kd.weight > 0 or gd.relvit.weight > 0
    if not others:
        raise ConfigError("guidance.ce_weight is 0 and no guidance term is on, so nothing would train; "
                          "set guidance.relvit.weight (or another term) > 0, or ce_weight > 0")


def student_config(cfg):
    """The model config the student is built from: with the distillation token on, the DeiT
    student's distilled variant (an extra token and head)."""
    if cfg.guidance.distill_token.weight <= 0:
        return cfg.model
    try:
        return dataclasses.replace(cfg.model, name=distilled_variant(cfg.model.name))
    except ModelError as e:
        raise ModelError(f"guidance.distill_token: {e}") from None


def check_terms(cfg, *, in_chans: int = 3, num_classes: int = 10, teacher: bool = False) -> None:
    """build_task's student-side checks, on the meta device (no memory, no init, no data): the
    student builds at data.img_size, the distillation token has a DeiT-style student, LG's block
    map fits the student (when a teacher will be there), DRLoc and RelViT have a token grid, and
    something trains when guidance.ce_weight is 0. The teacher-side checks (its logits, its stages) need the loaded
    teacher and stay in build_task."""
    with torch.device("meta"):
        student = create_classifier(student_config(cfg), img_size=cfg.data.img_size, in_chans=in_chans,
                                    num_classes=num_classes)
        if teacher:
            resolve_blocks(cfg, student)
        if cfg.guidance.drloc.weight > 0:
            _drloc(cfg, student, in_chans)
        if cfg.guidance.relvit.weight > 0:
            _relvit(cfg, student, in_chans)
    _check_something_trains(cfg, lg=teacher)


def build_task(cfg, *, in_chans: int, num_classes: int, teacher_channels: list[int] | None = None,
               targets: TargetFn | None = None) -> Task:
    """Student first (so its init depends on the seed alone), then guidance heads. Terms that are
    off (weight 0) are not built and draw no random numbers; LG is built whenever there is a teacher.
    Every incompatibility (term vs student, term vs teacher) is an error here, before training."""
    gd = cfg.guidance
    if gd.distill_token.weight > 0:
        _check_teacher_logits("guidance.distill_token.weight", targets, num_classes)
    if gd.kd.weight > 0:
        _check_teacher_logits("guidance.kd.weight", targets, num_classes)
    student = create_classifier(student_config(cfg), img_size=cfg.data.img_size, in_chans=in_chans, num_classes=num_classes)
    if gd.distill_token.weight > 0:
        student.set_distilled_training(True)
    terms: dict[str, nn.Module] = {}
    if teacher_channels is not None:
        g = cfg.guidance.locality
        blocks = resolve_blocks(cfg, student)
        bad = [s for s in g.teacher_stages if not 0 <= s < len(teacher_channels)]
        if bad:
            raise ModelError(f"guidance.locality.teacher_stages: {bad} out of range; "
                             f"the teacher has {len(teacher_channels)} stages")
        terms["lg"] = LocalityGuidance(blocks, block_channels(student, blocks), list(g.teacher_stages),
                                       [teacher_channels[s] for s in g.teacher_stages], beta=g.beta, transform=g.transform)
    if gd.drloc.weight > 0:
        terms["drloc"] = _drloc(cfg, student, in_chans)
    if gd.distill_token.weight > 0:
        terms["dist"] = DistillationToken(gd.distill_token.weight)
    if gd.kd.weight > 0:
        terms["kd"] = LogitDistillation(gd.kd.weight, gd.kd.tau)
    prepare = None
    if gd.relvit.weight > 0:
        relvit_terms, prepare = _relvit(cfg, student, in_chans)
        terms.update(relvit_terms)
    _check_something_trains(cfg, lg="lg" in terms)
    if gd.ce_weight == 0 and gd.kd.weight == 0:
        _freeze_class_head(student, in_chans, cfg.data.img_size)
    return Task(student, terms, targets, ce_weight=gd.ce_weight, prepare=prepare)
