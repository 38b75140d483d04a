"""What a guidance term sees at one training step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TeacherOut:
    stages: list[torch.Tensor]  # teacher stage maps, B x C x h x w, no grad
    logits: torch.Tensor | None = None


@dataclass
class Context:
    """Everything comes from one forward pass of the student (and one of the teacher); the task
    fills only what its terms need (block maps for LG, the token grid for DRLoc)."""

    batch: dict  # image, label, index (+ whatever the data pipeline adds)
    logits: torch.Tensor  # student logits (the class head's, for a distilled student)
    features: dict[int, torch.Tensor] = field(default_factory=dict)  # block index -> B x C x h x w
    teacher: TeacherOut | None = None
    tokens: torch.Tensor | None = None  # final patch tokens after the final norm, B x C x h x w
    dist_logits: torch.Tensor | None = None  # the distillation head's logits (distilled students)
