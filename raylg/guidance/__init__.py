"""Guidance terms: each is an nn.Module owned by the task, called with the step's Context,
returning (weighted loss, stats). The engine sums the losses it is given and never learns
which terms are on.

    lg      LocalityGuidance            student block maps imitate the CNN teacher's stage maps
    drloc   DenseRelativeLocalization   predict token-pair offsets on the final token grid
    dist    DistillationToken           DeiT's distillation head on the teacher's hard labels
    kd      LogitDistillation           KL to the teacher's softened logits
    relvit_rel, relvit_pos, relvit_dist  RelViT's patch-relation tasks on every final token
"""

from raylg.guidance.base import Context, TeacherOut
from raylg.guidance.distill import DistillationToken, LogitDistillation, teacher_logit_classes
from raylg.guidance.drloc import DenseRelativeLocalization
from raylg.guidance.locality import LocalityGuidance
from raylg.guidance.relvit import AbsolutePositions, PairDistances, PatchShuffle, SpatialRelations, build_relvit_terms

__all__ = ["Context", "TeacherOut", "LocalityGuidance", "DenseRelativeLocalization", "DistillationToken",
           "LogitDistillation", "teacher_logit_classes", "SpatialRelations", "AbsolutePositions", "PairDistances",
           "PatchShuffle", "build_relvit_terms"]
