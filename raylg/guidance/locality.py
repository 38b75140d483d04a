"""Locality guidance (LG): the student's block maps imitate a CNN teacher's stage maps.

Per guided pair (student block b, teacher stage s): a trainable 1x1 conv with bias maps the
student's channels to the teacher's; both maps are bilinearly resized to the larger of the
two sizes; plain MSE. The term is beta * sum over pairs (beta constant, 2.5 in the paper).
The 1x1 conv runs before any resize: both are linear per pixel/channel and bilinear weights
sum to one, so the order does not change the result, only the cost.

``transform`` picks what is compared, as the reference's ``DISTILLATION.INTER_TRANSFORM``:

    linear      the trainable 1x1 aligner above (the default, the paper's)
    attention   a(f) = L2-normalise_per_image(mean over channels of f**2), B x hw
    similarity  g(f) = L2-normalise_per_row(F F^T), F = f flattened to B x (C*h*w): B x B

``attention`` and ``similarity`` have no parameters and need no channel match; both maps are
resized to the common size first, then transformed, then compared by MSE (fp32), as the
reference does. ``similarity`` compares images with each other, so it sees the batch a rank
holds (under DDP, the per-worker batch, as the reference's per-GPU batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raylg.guidance.base import Context


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _larger_size(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    ha, wa = a.shape[-2:]
    hb, wb = b.shape[-2:]
    return (ha, wa) if ha * wa >= hb * wb else (hb, wb)


def pair_mse(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """MSE after resizing both maps to the larger of the two spatial sizes (fp32)."""
    size = _larger_size(student_map, teacher_map)
    return F.mse_loss(_resize(student_map.float(), size), _resize(teacher_map.float(), size))


def attention_transform(f: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x hw: the channel-mean of squared activations, L2-normalised per image."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def similarity_transform(f: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x B: the batch's Gram matrix of flattened maps, each row L2-normalised."""
    flat = f.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


TRANSFORMS = {"attention": attention_transform, "similarity": similarity_transform}


def pair_transformed_mse(student_map: torch.Tensor, teacher_map: torch.Tensor, transform: str) -> torch.Tensor:
    """Resize both maps to the larger size, apply the parameter-free transform to each, MSE (fp32)."""
    size = _larger_size(student_map, teacher_map)
    fn = TRANSFORMS[transform]
    return F.mse_loss(fn(_resize(student_map.float(), size)), fn(_resize(teacher_map.float(), size)))


class LocalityGuidance(nn.Module):
    def __init__(self, student_blocks: list[int], student_channels: list[int], teacher_stages: list[int],
                 teacher_channels: list[int], beta: float = 2.5, transform: str = "linear"):
        super().__init__()
        if not (len(student_blocks) == len(student_channels) == len(teacher_stages) == len(teacher_channels)):
            raise ValueError(f"locality guidance: {len(student_blocks)} student blocks {student_blocks} "
                             f"but {len(teacher_stages)} teacher stages {teacher_stages}; give one block per stage")
        if transform != "linear" and transform not in TRANSFORMS:
            raise ValueError(f"guidance.locality.transform: {transform!r} is not one of 'linear', "
                             f"{', '.join(map(repr, TRANSFORMS))}")
        self.student_blocks = list(student_blocks)
        self.teacher_stages = list(teacher_stages)
        self.beta = float(beta)
        self.transform = transform
        # only the linear transform has parameters (one aligner per pair); the others have none
        self.aligners = nn.ModuleList(nn.Conv2d(cs, ct, kernel_size=1, bias=True)
                                      for cs, ct in zip(student_channels, teacher_channels) if transform == "linear")

    def forward(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if ctx.teacher is None:
            raise RuntimeError("locality guidance needs teacher stage maps (online teacher or feature shards)")
        stats, total = {}, 0.0
        for i, (block, stage) in enumerate(zip(self.student_blocks, self.teacher_stages)):
            student_map, teacher_map = ctx.features[block], ctx.teacher.stages[stage]
            if self.transform == "linear":
                mse = pair_mse(self.aligners[i](student_map), teacher_map)
            else:
                mse = pair_transformed_mse(student_map, teacher_map, self.transform)
            stats[f"mse{i}"] = mse.detach()
            total = total + mse
        stats["mse"] = total.detach()
        return self.beta * total, stats
