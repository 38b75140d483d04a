"""Guidance terms: each is an nn.Module owned by the task, called with the step's Context,
returning (weighted loss, stats). The engine sums the losses it is given and never learns
which terms are on."""

from raylg.guidance.base import Context, TeacherOut
from raylg.guidance.locality import LocalityGuidance

__all__ = ["Context", "TeacherOut", "LocalityGuidance"]
