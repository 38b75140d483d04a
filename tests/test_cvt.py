"""CvT-13 as a student: registry, published parameter count, block maps, 224 and 32 px training
steps, LG/DRLoc checks on the meta device, and its build-time errors.

CPU, a few seconds: one 224 px image, batches of two at 32 px; parameter counts on meta. The
32 px training step of both presets (1 and 3 channels) runs in tests/test_models.py with every
student of raylg.models.STUDENTS.
"""

import pytest
import timm
import torch

from conftest import random_images, seeded_student
from raylg import config as config_lib
from raylg.config import ModelConfig
from raylg.models import (
    STUDENTS,
    ModelError,
    block_channels,
    create_student,
    default_layer_map,
    forward_with_blocks,
    num_blocks,
    token_grid,
)
from raylg.models.cvt import CvT
from raylg.models.factory import PUBLISHED_AT, PUBLISHED_PARAMS, param_count, student_family
from raylg.preflight import preflight
from raylg.task import _token_grid_size, build_task, check_terms

CVT = ["cvt_13", "cvt_13_s2_32"]


def test_cvt_is_registered_as_a_student_with_the_references_layer_map():
    assert timm.list_models("cvt_*") == CVT and all(n in STUDENTS for n in CVT)
    assert all(student_family(n).name == "cvt" for n in CVT)
    # lkhl/tiny-transformers configs/cvt/cvt-13_c100_ours.yaml: INTER_STUDENT_INDEX [0, 6, 11]
    assert [default_layer_map(n) for n in CVT] == [[0, 6, 11], [0, 6, 11]]
    model = timm.create_model("cvt_13", img_size=32)
    assert isinstance(model, CvT) and num_blocks(model) == 13
    assert block_channels(model, list(range(13))) == [64] + [192] * 2 + [384] * 10


def test_parameter_count_is_the_published_20m():
    assert PUBLISHED_PARAMS["cvt_13"] == 20.0 and PUBLISHED_AT["cvt_13"] == (224, 1000)
    assert param_count("cvt_13") == 19_997_480  # what microsoft/CvT's cls_cvt.py builds for cvt-13-224x224.yaml
    assert param_count("cvt_13", img_size=32, num_classes=100) == 19_650_980  # CIFAR-100: the head shrinks
    # the 32 px variant: a 3x3 first embedding instead of 7x7 (40 x 3 x 64 = 7,680 fewer weights)
    assert param_count("cvt_13", 32, 100) - param_count("cvt_13_s2_32", 32, 100) == 7_680


# -- shapes, walks, training ------------------------------------------------------------------


@pytest.mark.parametrize("name, img_size, grids", [
    ("cvt_13", 224, [(56, 56), (28, 28), (14, 14)]),
    ("cvt_13", 32, [(8, 8), (4, 4), (2, 2)]),
    ("cvt_13_s2_32", 32, [(16, 16), (8, 8), (4, 4)]),
])
def test_stage_grids(name, img_size, grids):
    with torch.device("meta"):
        model = create_student(name, img_size=img_size, in_chans=3, num_classes=10)
    assert model.grid_sizes(img_size) == grids


def test_drop_path_is_the_official_per_stage_rule():
    with torch.device("meta"):
        model = create_student(ModelConfig(name="cvt_13", drop_path=0.1), 224, 3, 1000)
    rates = [[getattr(b.drop_path1, "drop_prob", 0.0) for b in s.blocks] for s in model.stages]
    # DROP_PATH_RATE [0.0, 0.0, 0.1]: each stage rises linearly from 0 to its own rate
    assert rates[:2] == [[0.0], [0.0, 0.0]] and rates[2] == pytest.approx([0.1 * i / 9 for i in range(10)])


def _backward_is_finite(model, x, blocks):
    logits, maps = forward_with_blocks(model, x, blocks)
    (logits.logsumexp(1).mean() + sum(m.square().mean() for m in maps)).backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, bad
    return logits, maps


def test_forward_backward_at_224_on_one_image():
    model = seeded_student("cvt_13", img_size=224, num_classes=100, drop_path=0.1).train()
    logits, maps = _backward_is_finite(model, random_images(224, batch=1), default_layer_map("cvt_13"))
    assert logits.shape == (1, 100)
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 56, 56), (384, 14, 14), (384, 14, 14)]


def _direct(model, x):
    """Every block's map and the logits, stage by stage, without forward_intermediates."""
    maps = []
    for stage in model.stages:
        t = stage.patch_embed(x)
        size = tuple(t.shape[-2:])
        t = t.flatten(2).transpose(1, 2)
        if stage.cls_token is not None:
            t = torch.cat((stage.cls_token.expand(x.shape[0], -1, -1), t), dim=1)
        for block in stage.blocks:
            t = block(t, size)
            maps.append(t[:, stage.num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], -1, *size))
        x = maps[-1]
    return maps, model.head(model.norm(t)[:, 0])


@pytest.mark.parametrize("name", CVT)
def test_forward_intermediates_equal_a_direct_walk_and_logits_equal_model(name):
    model, x = seeded_student(name).eval(), random_images()
    with torch.no_grad():
        want_maps, want_logits = _direct(model, x)
        logits, maps = forward_with_blocks(model, x, list(range(13)))
        assert torch.allclose(logits, model(x), atol=1e-5) and torch.allclose(logits, want_logits, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, want_maps))
        # timm's conventions: int = last n, NLC tokens, norm on last-stage blocks, stop_early
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True, output_fmt="NLC")
        assert [tuple(t.shape) for t in last2] == [(2, want_maps[-1].shape[-2] * want_maps[-1].shape[-1], 384)] * 2
        normed = model.forward_intermediates(x, indices=[12], norm=True, intermediates_only=True)[0]
        flat = want_maps[12].flatten(2).transpose(1, 2)
        assert torch.allclose(normed.flatten(2).transpose(1, 2), model.norm(flat), atol=1e-5)
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.allclose(early[0], want_maps[0], atol=1e-5)
        grid = token_grid(model, model.forward_features(x))
    assert torch.allclose(grid.flatten(2).transpose(1, 2), model.norm(flat), atol=1e-5)


def test_a_batch_of_one_at_32_fails_in_training_mode_only_where_kv_is_1x1():
    model = seeded_student("cvt_13").train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(random_images(batch=1))  # the last stage's k/v BatchNorm sees one value per channel
    assert model.eval()(random_images(batch=1)).shape == (1, 10)
    seeded_student("cvt_13_s2_32").train()(random_images(batch=1))  # 4x4 -> 2x2 k/v: fine


# -- raylg's checks: LG map, DRLoc grid, preflight on meta -------------------------------------------


@pytest.mark.parametrize("name, img_size, grid", [("cvt_13", 224, (14, 14)), ("cvt_13", 32, (2, 2)),
                                                   ("cvt_13_s2_32", 32, (4, 4))])
def test_check_terms_and_preflight_with_lg_and_drloc_on_meta(name, img_size, grid):
    cfg = config_lib.load(None, {"model.name": name, "data.img_size": img_size, "guidance.drloc.weight": 0.5})
    preflight(cfg, teacher=True)  # check_terms on meta: the student at this size, LG's map, DRLoc's grid
    with torch.device("meta"):
        student = create_student(name, img_size=img_size, in_chans=1, num_classes=10)
        assert _token_grid_size(student, 1, img_size) == grid


def test_build_task_with_lg_and_drloc_trains_one_step():
    cfg = config_lib.load(None, {"model.name": "cvt_13_s2_32", "model.drop_path": 0.1, "guidance.drloc.weight": 0.5})
    torch.manual_seed(0)
    task = build_task(cfg, in_chans=1, num_classes=10, teacher_channels=[16, 32, 64])
    assert task.blocks == [0, 6, 11] and set(task.terms) == {"lg", "drloc"}
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 1, 32, 32, generator=g), "label": torch.tensor([1, 2]), "index": torch.arange(2)}
    from raylg.guidance import TeacherOut

    task.__dict__["targets"] = lambda b: TeacherOut(stages=[torch.randn(2, c, s, s, generator=g)
                                                            for c, s in ((16, 32), (32, 16), (64, 8))])
    out = task(batch)
    sum(out["losses"].values()).backward()
    assert set(out["losses"]) == {"ce", "lg", "drloc"} and all(torch.isfinite(v) for v in out["losses"].values())
    missing = [n for n, p in task.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing  # the student, LG's aligners and DRLoc's head all learn


def test_bad_block_index_and_too_small_input_name_the_limits():
    cfg = config_lib.load(None, {"model.name": "cvt_13", "guidance.locality.student_blocks": [0, 6, 13]})
    with pytest.raises(ModelError, match=r"block 13 is out of range; it has num_blocks=13"):
        check_terms(cfg, teacher=True)
    with pytest.raises(ModelError, match=r"stage 1's 7x7 embedding \(stride 4, padding 2\) leaves no tokens"), \
            torch.device("meta"):
        create_student("cvt_13", img_size=2, in_chans=3, num_classes=10)  # data.img_size itself stops at 8
    cfg = config_lib.load(None, {"model.name": "cvt_13", "guidance.distill_token.weight": 1.0})
    with pytest.raises(ModelError, match="cannot carry a distillation token"):
        check_terms(cfg)


@pytest.mark.parametrize("kwargs, match", [
    (dict(global_pool="token", cls_token=(False, False, False)), "needs a class token in the last stage"),
    (dict(stride_q=2), "would change the token grid"),
    (dict(depths=(1, 2)), r"depths: 2 values \[1, 2\] for 3 stages"),
    (dict(qkv_proj_method="conv"), "qkv_proj_method 'conv'"),
    (dict(num_heads=(1, 3, 5)), "width 384 is not divisible by its 5 heads"),
])
def test_bad_architecture_kwargs_are_refused(kwargs, match):
    with pytest.raises(ModelError, match=match), torch.device("meta"):
        create_student(ModelConfig(name="cvt_13", kwargs=kwargs), 32, 3, 10)


def test_avg_pool_variant_without_class_token_and_no_pretrained_weights():
    with torch.device("meta"):
        model = create_student(ModelConfig(name="cvt_13", kwargs=dict(cls_token=(False,) * 3, qkv_proj_method="avg")),
                               32, 3, 10)
    assert model.global_pool == "avg" and model.num_prefix_tokens == 0 and model.no_weight_decay() == set()
    with pytest.raises(ModelError, match="no pretrained weights"):
        timm.create_model("cvt_13", pretrained=True)
