"""Default student blocks guided by the teacher's stages 0, 1, 2 (DESIGN.md's layer maps).

Blocks are flat indices over the student's stages (see raylg.models.features). A name takes
the map of its longest matching prefix, so ``deit_tiny_patch4_32`` and
``deit_tiny_distilled_patch16_224`` share DeiT-Ti's map and ``pit_ti_distilled_224``
PiT-Ti's. The maps assume the named architecture's depth: a run that changes depth
through ``model.kwargs`` should set ``guidance.locality.student_blocks`` itself.

The CPU students follow the same rule as the paper maps (first block, a middle block,
last block): ``deit_micro_patch4_32`` (4 blocks) -> 0, 2, 3 like DeiT-Ti's 0, 6, 11;
``pvt_v2_micro`` (1 block per stage) -> 0, 1, 3 like PVTv2-b0's 0, 3, 7 (first block,
end of stage 1, last block). At 32px input a PVT's last stage is 1x1, as it is for
PVTv2-b0; the MSE then compares it with the teacher's 8x8 map resized up.

CvT-13 (``cvt_13``, ``cvt_13_s2_32``: depths 1/2/10, flat blocks 0 | 1-2 | 3-12) takes the
reference's own map, ``DISTILLATION.INTER_STUDENT_INDEX: [0, 6, 11]`` in lkhl/tiny-transformers'
``configs/cvt/cvt-13_c100_ours.yaml`` (teacher stages [0, 1, 2], beta 2.5), whose indices
count the same flat blocks (its hooks sit on every CvT Block in stage order): block 0 is stage
1's only block (64 channels, stride 4), blocks 6 and 11 are stage 3's 4th and 9th (384
channels, stride 16); stage 2 is not guided. At 224 px: 56x56, 14x14, 14x14 maps against the
teacher's 32x32, 16x16, 8x8; at 32 px cvt_13 gives 8x8, 2x2, 2x2 and cvt_13_s2_32 16x16, 4x4, 4x4.
"""

from __future__ import annotations

from .errors import ModelError

LAYER_MAPS: dict[str, tuple[int, ...]] = {
    "deit_tiny_": (0, 6, 11),  # DeiT-Ti: 12 blocks, dim 192
    "t2t_vit_7": (0, 3, 6),  # T2T-ViT-7: 7 blocks, dim 256
    "t2t_vit_14": (0, 7, 13),  # T2T-ViT-14: 14 blocks, dim 384
    "pit_ti_": (0, 6, 11),  # PiT-Ti: depths 2/6/4, dims 64/128/256
    "pvt_tiny": (0, 3, 7),  # PVT-Ti: depths 2/2/2/2, dims 64/128/320/512
    "pvt_v2_b0": (0, 3, 7),  # PVTv2-b0: depths 2/2/2/2, dims 32/64/160/256
    "convit_tiny": (0, 6, 11),  # ConViT-Ti: 12 blocks (10 GPSA), dim 192
    "cct_7_": (0, 3, 6),  # CCT-7: 7 blocks, dim 256, all 16x16 at 32px (raylg's choice, as T2T-ViT-7)
    "cvt_13": (0, 6, 11),  # CvT-13: depths 1/2/10, dims 64/192/384 (the reference's map; also cvt_13_s2_32)
    "deit_micro_patch4_32": (0, 2, 3),  # CPU student: 4 blocks, dim 64
    "pvt_v2_micro": (0, 1, 3),  # CPU student: depths 1/1/1/1, dims 32/48/64/96
}


def default_layer_map(name: str) -> list[int]:
    """The student blocks paired with teacher stages 0, 1, 2 for the named student."""
    matches = [prefix for prefix in LAYER_MAPS if name.startswith(prefix)]
    if not matches:
        known = ", ".join(f"{p}* -> {list(m)}" for p, m in LAYER_MAPS.items())
        raise ModelError(
            f"no default layer map for student {name!r}; set guidance.locality.student_blocks "
            f"(one block per teacher stage). Known maps: {known}"
        )
    return list(LAYER_MAPS[max(matches, key=len)])
