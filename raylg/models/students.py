"""Students raylg registers in timm's registry (timm has the classes, not these sizes).

- ``deit_tiny_patch4_32``: DeiT-Ti (dim 192, 12 blocks, 3 heads) with 4x4 patches for
  native 32x32 input (8x8 tokens), the ~3.4x-cheaper-than-224 setting.
- ``deit_micro_patch4_32``: a 4-block, dim-64 DeiT for fast CPU presets, tests and sweeps.
- ``pvt_v2_micro``: a PVTv2 with one block per stage (dims 32/48/64/96, ~0.34M parameters
  beside deit_micro's 0.2M), the hierarchical counterpart, so a CPU sweep can search over
  architecture.
- ``deit_tiny_distilled_patch4_32``, ``deit_micro_distilled_patch4_32``: the same with DeiT's
  distillation token and head (timm's ``VisionTransformerDistilled``).

``DISTILLED`` maps a student to its distilled variant (timm's DeiT and PiT ones and the above):
what raylg builds when the distillation-token term is on.

All are built with ``timm.create_model(name, pretrained=False, ...)`` like any timm model;
keyword arguments (depth, embed_dim, ...) override the defaults below. No weights exist.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from timm.models.vision_transformer import VisionTransformer

from .builder import build, default_cfg
from .errors import ModelError

_DEIT_TINY = dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)
_DEIT_MICRO = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2)
_PVT_V2_MICRO = dict(depths=(1, 1, 1, 1), embed_dims=(32, 48, 64, 96), num_heads=(1, 1, 2, 3), mlp_ratios=(4, 4, 4, 4),
                     sr_ratios=(4, 2, 1, 1))
_DISTILLED_HEADS = dict(fixed_input_size=True, classifier=("head", "head_dist"))

# name: (class, architecture defaults, extra cfg fields, docstring)
_STUDENTS = {
    "deit_tiny_patch4_32": (VisionTransformer, _DEIT_TINY, dict(fixed_input_size=True),
                            "DeiT-Ti at 32x32 input: patch 4, dim 192, 12 blocks, 3 heads."),
    "deit_micro_patch4_32": (VisionTransformer, _DEIT_MICRO, dict(fixed_input_size=True),
                             "A CPU-sized DeiT at 32x32 input: patch 4, dim 64, 4 blocks, 2 heads."),
    "deit_tiny_distilled_patch4_32": (VisionTransformerDistilled, _DEIT_TINY, _DISTILLED_HEADS,
                                      "deit_tiny_patch4_32 with DeiT's distillation token and head."),
    "deit_micro_distilled_patch4_32": (VisionTransformerDistilled, _DEIT_MICRO, _DISTILLED_HEADS,
                                       "deit_micro_patch4_32 with DeiT's distillation token and head."),
    "pvt_v2_micro": (PyramidVisionTransformerV2, _PVT_V2_MICRO, {},
                     "A CPU-sized PVTv2: 4 stages of 1 block, dims 32/48/64/96, spatial reduction 4/2/1/1."),
}

# register_model picks these up from the module's `default_cfgs`
default_cfgs = generate_default_cfgs({
    name: default_cfg(num_classes=100, input_size=(3, 32, 32), crop_pct=1.0, **extra)
    for name, (_, _, extra, _) in _STUDENTS.items()
})

# student -> the same architecture with a distillation token and head
DISTILLED: dict[str, str] = {
    "deit_tiny_patch16_224": "deit_tiny_distilled_patch16_224",
    "deit_small_patch16_224": "deit_small_distilled_patch16_224",
    "deit_base_patch16_224": "deit_base_distilled_patch16_224",
    "deit_base_patch16_384": "deit_base_distilled_patch16_384",
    "deit_tiny_patch4_32": "deit_tiny_distilled_patch4_32",
    "deit_micro_patch4_32": "deit_micro_distilled_patch4_32",
    "pit_ti_224": "pit_ti_distilled_224",
    "pit_xs_224": "pit_xs_distilled_224",
    "pit_s_224": "pit_s_distilled_224",
    "pit_b_224": "pit_b_distilled_224",
}


def distilled_variant(name: str) -> str:
    """The student with a distillation token that shares name's architecture (name itself if it
    has one); ModelError naming the student when there is none (PVT, T2T-ViT, CCT, ConViT...)."""
    if name in DISTILLED.values():
        return name
    if name not in DISTILLED:
        raise ModelError(f"student {name!r} cannot carry a distillation token (no distilled variant); "
                         f"students that can: {', '.join(DISTILLED)}")
    return DISTILLED[name]


def _entry_point(name: str):
    cls, defaults, _, doc = _STUDENTS[name]

    def entry(pretrained: bool = False, **kwargs):
        return build(cls, name, pretrained, defaults, kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = doc
    entry.__annotations__ = {"pretrained": bool, "return": cls}  # the class raylg's factory reads for the family
    return register_model(entry)


deit_tiny_patch4_32 = _entry_point("deit_tiny_patch4_32")
deit_micro_patch4_32 = _entry_point("deit_micro_patch4_32")
deit_tiny_distilled_patch4_32 = _entry_point("deit_tiny_distilled_patch4_32")
deit_micro_distilled_patch4_32 = _entry_point("deit_micro_distilled_patch4_32")
pvt_v2_micro = _entry_point("pvt_v2_micro")
