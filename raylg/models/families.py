"""Student families: how raylg sizes a student and walks its blocks, keyed by model class.

A *family* is what raylg needs to know about a student architecture beyond timm's
registry: whether its builder takes ``img_size``, whether an input size fits its patch
grid, how many transformer blocks it has (counted flat over stages) and their widths, and
how to run it while collecting chosen block outputs as ``B x C x h x w`` maps, and how to
read the final token grid (after the final norm) out of its ``forward_features`` output.

Families are looked up by the model's class (walking the MRO, so timm subclasses such as
``VisionTransformerDistilled`` share their parent's entry). A new student architecture
(T2T-ViT, PVT v1, CCT) adds one ``register_family`` call beside its walk, not a branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .errors import ModelError

# walk(model, x, take, final) -> (final_features or None, maps)
#   take:  sorted, distinct, in-range flat block indices (may be empty)
#   final: True  -> run the whole trunk and return what model.forward_features(x) returns
#          False -> return None and may stop after the last block in take
#   maps:  one B x C x h x w tensor per index in take, same order: the block output after
#          its residual, before any (stage or final) norm, prefix tokens dropped
Walk = Callable[[nn.Module, torch.Tensor, Sequence[int], bool], tuple[Optional[torch.Tensor], list[torch.Tensor]]]

# tokens(model, forward_features output) -> B x C x h x w: the final patch tokens after the
# final norm, prefix tokens dropped (what DRLoc samples from)
Tokens = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Family:
    name: str
    walk: Walk
    channels: Callable[[nn.Module], list[int]]  # width of every block, flat over stages
    size_error: Callable[[nn.Module, int], Optional[str]]  # why img_size does not fit, or None
    takes_img_size: bool = True  # whether the timm builder accepts img_size=
    tokens: Optional[Tokens] = None  # None: forward_features keeps no patch-token grid (PiT)


_FAMILIES: dict[type, Family] = {}


def register_family(cls: type, family: Family) -> Family:
    """Declare how raylg walks models of class cls (and its subclasses)."""
    _FAMILIES[cls] = family
    return family


def find_family(cls: type) -> Optional[Family]:
    for klass in cls.__mro__:
        if klass in _FAMILIES:
            return _FAMILIES[klass]
    return None


def supported_classes() -> list[str]:
    return sorted(c.__name__ for c in _FAMILIES)


def model_name(model: nn.Module) -> str:
    """The registry name a timm-built model was created under, else its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def family_of(model: nn.Module) -> Family:
    family = find_family(type(model))
    if family is None:
        raise ModelError(
            f"{model_name(model)} ({type(model).__name__}) is not a student raylg can take block "
            f"features from; supported classes: {', '.join(supported_classes())}"
        )
    return family
