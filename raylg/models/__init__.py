"""Students (through timm's registry), CIFAR ResNet teachers, and block features for LG.

    student = create_student(cfg.model, img_size=32, in_chans=3, num_classes=100)
    maps = block_features(student, x, default_layer_map(cfg.model.name))  # B x C x h x w each
    logits, maps = forward_with_blocks(student, x, blocks)               # one pass, for training
    teacher = create_teacher("resnet56_cifar", in_chans=3, num_classes=100)
    teacher.forward_stages(x32)  # [16x32x32, 32x16x16, 64x8x8]

Importing this package registers raylg's own models (resnet*_cifar, deit_*_patch4_32,
pvt_v2_micro, t2t_vit_7/14, pvt_tiny, cct_7_3x1_32,
cvt_13, cvt_13_s2_32) with timm, so ``timm.create_model`` builds them by name too.
"""

from .errors import ModelError
from .factory import (
    PUBLISHED_AT,
    PUBLISHED_PARAMS,
    STUDENTS,
    TEACHERS,
    create_classifier,
    create_student,
    create_teacher,
    is_teacher,
    param_count,
    student_family,
)
from .features import (
    block_channels,
    block_features,
    forward_trunk,
    forward_with_blocks,
    has_token_grid,
    num_blocks,
    resolve_blocks,
    token_grid,
)
from .layer_maps import LAYER_MAPS, default_layer_map
from .resnet_cifar import ResNetCifar
from .students import DISTILLED, distilled_variant

__all__ = [
    "DISTILLED",
    "distilled_variant",
    "forward_trunk",
    "has_token_grid",
    "token_grid",
    "LAYER_MAPS",
    "PUBLISHED_AT",
    "PUBLISHED_PARAMS",
    "param_count",
    "ModelError",
    "ResNetCifar",
    "STUDENTS",
    "TEACHERS",
    "block_channels",
    "block_features",
    "create_classifier",
    "create_student",
    "is_teacher",
    "create_teacher",
    "default_layer_map",
    "forward_with_blocks",
    "num_blocks",
    "resolve_blocks",
    "student_family",
]
