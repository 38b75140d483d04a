"""Contracts of raylg.models: students via timm, CIFAR ResNet teachers, block features.

CPU only, seconds: batches of 1-2 images, no weights (pretrained=False everywhere).
"""

import itertools

import pytest
import timm
import torch

from conftest import random_images, same, seeded_student
from raylg.config import ModelConfig
from raylg.models import (
    STUDENTS,
    TEACHERS,
    ModelError,
    block_channels,
    block_features,
    create_student,
    create_teacher,
    default_layer_map,
    forward_with_blocks,
    num_blocks,
)

PAPER_STUDENTS = ["deit_tiny_patch16_224", "pit_ti_224", "pvt_v2_b0", "convit_tiny"]

# default-map feature shapes (C, h, w) per student at 32 and 224 px input
SHAPES = {
    ("t2t_vit_7", 32): [(256, 2, 2)] * 3,
    ("t2t_vit_14", 32): [(384, 2, 2)] * 3,
    ("pvt_tiny", 32): [(64, 8, 8), (128, 4, 4), (512, 1, 1)],
    ("cct_7_3x1_32", 32): [(256, 16, 16)] * 3,
    ("cvt_13", 32): [(64, 8, 8), (384, 2, 2), (384, 2, 2)],
    ("cvt_13_s2_32", 32): [(64, 16, 16), (384, 4, 4), (384, 4, 4)],
    ("deit_tiny_patch16_224", 32): [(192, 2, 2)] * 3,
    ("deit_tiny_patch16_224", 224): [(192, 14, 14)] * 3,
    ("deit_tiny_patch4_32", 32): [(192, 8, 8)] * 3,
    ("pit_ti_224", 32): [(64, 3, 3), (128, 2, 2), (256, 1, 1)],
    ("pit_ti_224", 224): [(64, 27, 27), (128, 14, 14), (256, 7, 7)],
    ("pvt_v2_b0", 32): [(32, 8, 8), (64, 4, 4), (256, 1, 1)],
    ("pvt_v2_b0", 224): [(32, 56, 56), (64, 28, 28), (256, 7, 7)],
    ("convit_tiny", 32): [(192, 2, 2)] * 3,
    ("convit_tiny", 224): [(192, 14, 14)] * 3,
    ("deit_micro_patch4_32", 32): [(64, 8, 8)] * 3,
    ("pvt_v2_micro", 32): [(32, 8, 8), (48, 4, 4), (96, 1, 1)],
}


# -- students ----------------------------------------------------------------------------


def test_raylg_models_are_in_timms_registry():
    for name in ("deit_tiny_patch4_32", "deit_micro_patch4_32", "pvt_v2_micro", *TEACHERS):
        assert name in timm.list_models(name)
    assert type(timm.create_model("deit_micro_patch4_32", pretrained=False)).__name__ == "VisionTransformer"


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", STUDENTS)
def test_student_trains_at_32(name, in_chans):
    model = seeded_student(name, in_chans=in_chans, num_classes=7, drop_path=0.1).train()
    blocks = default_layer_map(name)
    logits, maps = forward_with_blocks(model, random_images(in_chans=in_chans), blocks)
    assert logits.shape == (2, 7)
    assert [tuple(m.shape[1:]) for m in maps] == SHAPES[(name, 32)]
    (logits.logsumexp(1).mean() + sum(m.square().mean() for m in maps)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert block_channels(model, blocks) == [s[0] for s in SHAPES[(name, 32)]]


@pytest.mark.parametrize("name", PAPER_STUDENTS)
def test_paper_student_at_224(name):
    model = seeded_student(name, img_size=224, num_classes=100).eval()
    with torch.no_grad():
        logits, maps = forward_with_blocks(model, random_images(224, batch=1), default_layer_map(name))
    assert logits.shape == (1, 100)
    assert [tuple(m.shape[1:]) for m in maps] == SHAPES[(name, 224)]


def test_student_takes_model_kwargs_and_drop_path():
    model = seeded_student("deit_micro_patch4_32", drop_path=0.2, depth=2, embed_dim=32)
    assert num_blocks(model) == 2 and block_channels(model, [0, 1]) == [32, 32]
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


# -- block features agree with the models' own forwards ------------------------------------


def _vit_tokens_per_block(model, x):
    t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    outs = []
    for block in model.blocks:
        t = block(t)
        outs.append(t)
    return outs


@pytest.mark.parametrize("name", ["deit_micro_patch4_32", "deit_tiny_patch16_224"])
def test_vit_features_are_block_outputs_before_final_norm(name):
    model, x = seeded_student(name).eval(), random_images()
    n = num_blocks(model)
    feats = block_features(model, x, list(range(n)))
    tokens = _vit_tokens_per_block(model, x)
    B, C, h, w = feats[0].shape
    for f, t in zip(feats, tokens):
        assert torch.equal(f, t[:, model.num_prefix_tokens :].transpose(1, 2).reshape(B, C, h, w))
    assert same(model.norm(tokens[-1]), model.forward_features(x))


@pytest.mark.parametrize("name", ["deit_tiny_patch4_32", "convit_tiny"])
def test_vit_family_equals_timm_forward_intermediates(name):
    model, x = seeded_student(name).eval(), random_images()
    blocks = list(range(num_blocks(model)))  # ConViT: blocks 10, 11 also carry its late class token
    ours = block_features(model, x, blocks)
    timms = model.forward_intermediates(x, indices=blocks, norm=False, output_fmt="NCHW", intermediates_only=True)
    assert len(ours) == len(timms) == 12
    assert all(torch.equal(a, b) for a, b in zip(ours, timms))


@pytest.mark.parametrize("name", STUDENTS)
def test_single_pass_reproduces_model_output(name):
    model, x = seeded_student(name).eval(), random_images()
    blocks = list(range(num_blocks(model)))
    with torch.no_grad():
        logits, maps = forward_with_blocks(model, x, blocks)
        assert same(logits, model(x))
        assert all(torch.equal(a, b) for a, b in zip(maps, block_features(model, x, blocks)))
        assert same(forward_with_blocks(model, x, [])[0], model(x))


def test_pit_stage_ends_equal_timm_stage_intermediates():
    model, x = seeded_student("pit_ti_224").eval(), random_images()
    ours = block_features(model, x, [1, 7, 11])  # last block of each stage (depths 2/6/4)
    timms = model.forward_intermediates(x, indices=[0, 1, 2], intermediates_only=True)
    assert all(same(a, b) for a, b in zip(ours, timms))


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_micro"])
def test_pvt_v2_blocks_plus_stage_norm_equal_timm(name):
    model, x = seeded_student(name).eval(), random_images()
    ends = list(itertools.accumulate(len(s.blocks) for s in model.stages))
    ours = block_features(model, x, [e - 1 for e in ends])  # last block of every stage, pre-norm
    normed = [s.norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for s, f in zip(model.stages, ours)]
    timms = model.forward_intermediates(x, intermediates_only=True)
    assert all(same(a, b) for a, b in zip(normed, timms))
    assert same(model.forward_head(normed[-1]), model(x))


def test_block_features_order_repeats_negatives_and_grad():
    model, x = seeded_student("pvt_v2_micro"), random_images()
    a0, a3, a1 = block_features(model, x, [0, 3, 1])
    b3, b0, b0_again = block_features(model, x, [-1, 0, 0])
    assert torch.equal(a3, b3) and torch.equal(a0, b0) and b0_again is b0
    a1.sum().backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert model.head.weight.grad is None  # stopped after the last requested block


# -- layer maps ----------------------------------------------------------------------------


def test_default_layer_maps():
    assert default_layer_map("deit_tiny_patch16_224") == [0, 6, 11]
    assert default_layer_map("deit_tiny_patch4_32") == [0, 6, 11]
    assert default_layer_map("pit_ti_224") == [0, 6, 11]
    assert default_layer_map("pvt_v2_b0") == [0, 3, 7]
    assert default_layer_map("convit_tiny") == [0, 6, 11]
    assert default_layer_map("t2t_vit_7") == [0, 3, 6]
    assert default_layer_map("pvt_tiny") == [0, 3, 7]
    assert default_layer_map("deit_micro_patch4_32") == [0, 2, 3]
    assert default_layer_map("pvt_v2_micro") == [0, 1, 3]
    with pytest.raises(ModelError, match="no default layer map for student 'vit_small_patch16_224'"):
        default_layer_map("vit_small_patch16_224")


# -- teachers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shapes",
    [
        ("resnet56_cifar", [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
        ("resnet20_cifar", [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
        ("resnet18_cifar", [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    ],
)
def test_teacher_stages_at_32(name, shapes):
    teacher = create_teacher(name, in_chans=3, num_classes=100)
    x = random_images()
    stages = teacher.forward_stages(x)
    assert [tuple(s.shape[1:]) for s in stages] == shapes
    final, maps = teacher.forward_intermediates(x, indices=[0, -1])
    assert torch.equal(maps[0], stages[0]) and torch.equal(maps[1], stages[-1]) and torch.equal(final, stages[-1])
    assert teacher(x).shape == (2, 100)
    assert same(teacher.forward_head(final), teacher(x))
    maps, logits = teacher.forward_stages(x, with_logits=True)
    assert same(logits, teacher(x)) and all(torch.equal(a, b) for a, b in zip(maps, stages))


def test_resnet56_cifar_layout_and_parameter_count():
    teacher = create_teacher("resnet56_cifar", in_chans=3, num_classes=100)
    count = sum(p.numel() for p in teacher.parameters())
    assert abs(count - 0.85e6) / 0.85e6 < 0.02  # He et al. 2016: 0.85M
    assert count == 861_620  # option-B shortcuts, 100-class head
    assert [len(s) for s in teacher.stages] == [9, 9, 9]
    assert teacher.stem[0].kernel_size == (3, 3) and teacher.stem[0].out_channels == 16
    assert create_teacher("resnet56_cifar", in_chans=1, num_classes=10)(random_images(in_chans=1)).shape == (2, 10)


# -- errors --------------------------------------------------------------------------------


def test_unknown_student_lists_valid_ones():
    with pytest.raises(ModelError) as err:
        create_student("deit_tiny_patch4_23", 32, 3, 10)
    assert "did you mean" in str(err.value) and "deit_tiny_patch4_32" in str(err.value)
    assert all(name in str(err.value) for name in STUDENTS)
    with pytest.raises(ModelError, match="builds a ResNetCifar, which raylg cannot take block features"):
        create_student("resnet56_cifar", 32, 3, 10)


def test_unknown_teacher_lists_valid_ones():
    with pytest.raises(ModelError, match="resnet56_cifar, resnet20_cifar, resnet18_cifar"):
        create_teacher("resnet65_cifar")
    with pytest.raises(ModelError, match="unknown teacher 'pvt_v2_b0'"):
        create_teacher("pvt_v2_b0")


@pytest.mark.parametrize(
    "name, img_size, match",
    [
        ("deit_tiny_patch16_224", 40, "40 is not divisible by the patch size 16"),
        ("deit_micro_patch4_32", 30, "30 is not divisible by the patch size 4"),
        ("convit_tiny", 24, "24 is not divisible by the patch size 16"),
        ("pit_ti_224", 36, r"36 does not fit the patch embedding \(patch 16, stride 8\)"),
    ],
)
def test_image_size_must_fit_patches(name, img_size, match):
    with pytest.raises(ModelError, match=match):
        create_student(name, img_size, 3, 10)


def test_block_out_of_range_names_model_index_and_count():
    model = seeded_student("deit_micro_patch4_32")
    with pytest.raises(ModelError, match=r"deit_micro_patch4_32: block 4 is out of range; it has num_blocks=4"):
        block_features(model, random_images(), [0, 4])
    with pytest.raises(ModelError, match=r"block -5 is out of range"):
        block_channels(model, [-5])
    with pytest.raises(ModelError, match="not an integer"):
        block_features(model, random_images(), [1.0])


def test_reserved_kwargs_and_weights_are_refused():
    with pytest.raises(ModelError, match="model.kwargs.img_size is not allowed: raylg sets img_size from data.img_size"):
        create_student(ModelConfig(name="deit_micro_patch4_32", kwargs={"img_size": 64}), 32, 3, 10)
    with pytest.raises(ModelError, match="no pretrained weights"):
        timm.create_model("pvt_v2_micro", pretrained=True)
    with pytest.raises(ModelError, match="cannot build deit_micro_patch4_32"):
        seeded_student("deit_micro_patch4_32", no_such_arg=1)


def test_non_student_model_has_no_block_features():
    teacher = create_teacher("resnet20_cifar")
    with pytest.raises(ModelError, match="not a student raylg can take block features from"):
        num_blocks(teacher)
