"""Locality guidance (LG): the student's block maps imitate a CNN teacher's stage maps.

Per guided pair (student block b, teacher stage s): a trainable 1x1 conv with bias maps the
student's channels to the teacher's; both maps are bilinearly resized to the larger of the
two sizes; plain MSE. The term is beta * sum over pairs (beta constant, 2.5 in the paper).
The 1x1 conv runs before any resize: both are linear per pixel/channel and bilinear weights
sum to one, so the order does not change the result, only the cost.
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


def pair_mse(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """MSE after resizing both maps to the larger of the two spatial sizes (fp32)."""
    hs, ws = student_map.shape[-2:]
    ht, wt = teacher_map.shape[-2:]
    size = (hs, ws) if hs * ws >= ht * wt else (ht, wt)
    return F.mse_loss(_resize(student_map.float(), size), _resize(teacher_map.float(), size))


class LocalityGuidance(nn.Module):
    def __init__(self, student_blocks: list[int], student_channels: list[int], teacher_stages: list[int],
                 teacher_channels: list[int], beta: float = 2.5):
        super().__init__()
        if not (len(student_blocks) == len(student_channels) == len(teacher_stages) == len(teacher_channels)):
            raise ValueError(f"locality guidance: {len(student_blocks)} student blocks {student_blocks} "
                             f"but {len(teacher_stages)} teacher stages {teacher_stages}; give one block per stage")
        self.student_blocks = list(student_blocks)
        self.teacher_stages = list(teacher_stages)
        self.beta = float(beta)
        self.aligners = nn.ModuleList(nn.Conv2d(cs, ct, kernel_size=1, bias=True)
                                      for cs, ct in zip(student_channels, teacher_channels))

    def forward(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if ctx.teacher is None:
            raise RuntimeError("locality guidance needs teacher stage maps (online teacher or feature shards)")
        stats, total = {}, 0.0
        for i, (block, stage, align) in enumerate(zip(self.student_blocks, self.teacher_stages, self.aligners)):
            mse = pair_mse(align(ctx.features[block]), ctx.teacher.stages[stage])
            stats[f"mse{i}"] = mse.detach()
            total = total + mse
        stats["mse"] = total.detach()
        return self.beta * total, stats
