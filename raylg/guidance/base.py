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
    batch: dict  # image, label, index (+ whatever the data pipeline adds)
    logits: torch.Tensor  # student logits
    features: dict[int, torch.Tensor] = field(default_factory=dict)  # block index -> B x C x h x w
    teacher: TeacherOut | None = None
