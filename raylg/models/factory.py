"""Build students and teachers by name through timm's registry (never with weights).

A student is any timm model whose class has a raylg family (raylg.models.families): plain
ViTs (DeiT and raylg's patch-4 variants), ConViT, PiT, PVTv2, and raylg's own T2T-ViT,
PVT v1, CCT and CvT. ``STUDENTS`` lists the ones raylg tests and has layer maps for. The family
decides whether the builder takes ``img_size`` (PVTv2 takes none: its padded conv
embeddings fit any size) and whether the image size fits the patch grid.

``param_count(name)`` builds a student on the meta device (no memory, no init cost) and
counts its parameters; ``PUBLISHED_PARAMS`` holds the papers' counts, measured at the
``PUBLISHED_AT`` setting (224 px / 1000 classes, except CCT: 32 px / 10 classes).
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, Optional, Union

import timm
import torch
from timm.models import is_model, list_models, model_entrypoint
from torch import nn

from ..config import ModelConfig
from . import cvt, resnet_cifar, students, walks  # noqa: F401  (register models and families)
from .errors import ModelError
from .families import Family, find_family, supported_classes

STUDENTS: tuple[str, ...] = (
    # the paper's students
    "deit_tiny_patch16_224",
    "deit_tiny_patch4_32",
    "pit_ti_224",
    "pvt_v2_b0",
    "convit_tiny",
    "t2t_vit_7",
    "pvt_tiny",
    # beyond the paper: a larger T2T-ViT, and CCT (the accuracy anchor at native 32 px)
    "t2t_vit_14",
    "cct_7_3x1_32",
    # beyond the paper's table, in the reference's configs: CvT-13, and its 32 px variant
    "cvt_13",
    "cvt_13_s2_32",
    # CPU-sized students for presets, tests and CPU sweeps
    "deit_micro_patch4_32",
    "pvt_v2_micro",
)
TEACHERS: tuple[str, ...] = ("resnet56_cifar", "resnet20_cifar", "resnet18_cifar")
# spelling hints only
_STUDENT_LIKE = ["deit_*", "vit_*", "pit_*", "pvt_v2_*", "convit_*", "t2t_vit_*", "pvt_tiny", "cct_*", "cvt_*"]

# Parameter counts (millions) as the papers publish them, and the (img_size, num_classes)
# they are counted at. Ours (param_count): DeiT-Ti 5.72, PiT-Ti 4.85, PVTv2-b0 3.67,
# ConViT-Ti 5.71, T2T-ViT-7 4.26, T2T-ViT-14 21.47, PVT-Tiny 13.23, CCT-7/3x1 3.760,
# CvT-13 19.997 (19,997,480, what the official code builds).
PUBLISHED_PARAMS: dict[str, float] = {
    "deit_tiny_patch16_224": 5.7,
    "pit_ti_224": 4.9,
    "pvt_v2_b0": 3.7,
    "convit_tiny": 5.7,
    "t2t_vit_7": 4.3,
    "t2t_vit_14": 21.5,
    "pvt_tiny": 13.2,
    "cct_7_3x1_32": 3.76,
    "cvt_13": 20.0,  # Wu et al. 2021, Table 2: 20M
}
PUBLISHED_AT: dict[str, tuple[int, int]] = {name: (224, 1000) for name in PUBLISHED_PARAMS} | {"cct_7_3x1_32": (32, 10)}

# kwargs raylg sets itself, and where the value comes from instead
_RESERVED = {
    "pretrained": "always False (raylg trains from scratch)",
    "img_size": "data.img_size",
    "in_chans": "the dataset's channels",
    "num_classes": "the dataset's classes",
    "drop_path_rate": "model.drop_path",
}


def _builder_class(name: str) -> Optional[type]:
    """The class a registered timm entrypoint builds (timm annotates every entrypoint)."""
    if not is_model(name):
        return None
    try:
        cls = typing.get_type_hints(model_entrypoint(name)).get("return")
    except Exception:  # an unresolvable annotation: treat as unknown
        return None
    return cls if isinstance(cls, type) else None


def _unknown(kind: str, name: str, valid: tuple[str, ...], pool: list[str], extra: str = "") -> ModelError:
    close = difflib.get_close_matches(name, list(dict.fromkeys([*valid, *pool])), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ModelError(f"unknown {kind} {name!r}{hint}. Valid {kind}s: {', '.join(valid)}{extra}")


def student_family(name: str) -> Family:
    """The family of the named student; ModelError listing the valid students if none."""
    cls = _builder_class(name)
    family = find_family(cls) if cls is not None else None
    if family is None:
        extra = f" (or any timm model of class {', '.join(supported_classes())})"
        if cls is not None:
            raise ModelError(
                f"{name!r} builds a {cls.__name__}, which raylg cannot take block features from. "
                f"Valid students: {', '.join(STUDENTS)}{extra}"
            )
        raise _unknown("student", name, STUDENTS, list_models(_STUDENT_LIKE), extra)
    return family


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except ModelError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ModelError(f"cannot build {name} with {kwargs}: {e}") from e


def create_student(cfg: Union[ModelConfig, str], img_size: int, in_chans: int, num_classes: int) -> nn.Module:
    """A randomly initialised student for img_size x img_size images with in_chans channels."""
    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    family = student_family(cfg.name)
    clash = sorted(_RESERVED.keys() & cfg.kwargs.keys())
    if clash:
        raise ModelError(f"model.kwargs.{clash[0]} is not allowed: raylg sets {clash[0]} from {_RESERVED[clash[0]]}")
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ModelError(f"img_size must be a positive integer, got {img_size!r}")
    kwargs = dict(pretrained=False, in_chans=in_chans, num_classes=num_classes, drop_path_rate=cfg.drop_path, **cfg.kwargs)
    if family.takes_img_size:
        kwargs["img_size"] = img_size
    model = _build(cfg.name, kwargs)
    problem = family.size_error(model, img_size)
    if problem:
        raise ModelError(f"{cfg.name} cannot take {img_size}x{img_size} input: {problem}")
    return model


def create_teacher(name: str, in_chans: int = 3, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """A randomly initialised CNN teacher exposing forward_stages(x) -> stage maps."""
    cls = _builder_class(name)
    if cls is None or not hasattr(cls, "forward_stages"):
        raise _unknown("teacher", name, TEACHERS, [])
    return _build(name, dict(pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs))


def is_teacher(name: str) -> bool:
    cls = _builder_class(name)
    return cls is not None and hasattr(cls, "forward_stages")


def create_classifier(cfg: Union[ModelConfig, str], img_size: int, in_chans: int, num_classes: int) -> nn.Module:
    """Whatever jobs train: a student, or a CNN teacher (jobs/train_teacher.py) by its name."""
    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    if is_teacher(cfg.name):
        return create_teacher(cfg.name, in_chans=in_chans, num_classes=num_classes, **cfg.kwargs)
    return create_student(cfg, img_size=img_size, in_chans=in_chans, num_classes=num_classes)


def param_count(name: str, img_size: int = 224, num_classes: int = 1000, in_chans: int = 3) -> int:
    """Parameters of the named student built for img_size / num_classes (on the meta device).

    Compare with the paper at its own setting: ``param_count(name, *PUBLISHED_AT[name])``.
    """
    with torch.device("meta"):
        model = create_student(name, img_size=img_size, in_chans=in_chans, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())
