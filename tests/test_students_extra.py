"""Contracts of raylg's own students (T2T-ViT, PVT v1, CCT) and the published parameter counts.

CPU only, seconds: batches of 1-2 images, no weights. Parameter counts are taken on the
meta device (raylg.models.factory.param_count), so even 224 px / 1000-class builds cost
nothing.
"""

import pytest
import timm
import torch

from conftest import random_images, same, seeded_student
from raylg.models import (
    STUDENTS,
    ModelError,
    block_channels,
    block_features,
    create_student,
    default_layer_map,
    forward_with_blocks,
    num_blocks,
)
from raylg.models.factory import PUBLISHED_AT, PUBLISHED_PARAMS, param_count

NEW = ["t2t_vit_7", "t2t_vit_14", "pvt_tiny", "cct_7_3x1_32"]

# default-map feature shapes (C, h, w); CCT (stride 2, a token per 2x2 pixels) is checked
# at 64 instead of 224, where its 12,544 tokens would take seconds per block on a CPU
SHAPES = {
    ("t2t_vit_7", 32): [(256, 2, 2)] * 3,
    ("t2t_vit_7", 224): [(256, 14, 14)] * 3,
    ("t2t_vit_14", 32): [(384, 2, 2)] * 3,
    ("t2t_vit_14", 224): [(384, 14, 14)] * 3,
    ("pvt_tiny", 32): [(64, 8, 8), (128, 4, 4), (512, 1, 1)],
    ("pvt_tiny", 224): [(64, 56, 56), (128, 28, 28), (512, 7, 7)],
    ("cct_7_3x1_32", 32): [(256, 16, 16)] * 3,
    ("cct_7_3x1_32", 64): [(256, 32, 32)] * 3,
}

# Published counts are rounded to 0.1M (CCT: 0.01M) and come from code that differs in
# small ways (PiT-Ti: timm 4.85M vs 4.9M published): 2% relative covers both; every
# student is within 1.1%.
PARAM_TOLERANCE = 0.02


def test_new_students_are_registered_everywhere():
    assert all(name in STUDENTS and timm.list_models(name) == [name] for name in NEW)
    assert [default_layer_map(n) for n in NEW] == [[0, 3, 6], [0, 7, 13], [0, 3, 7], [0, 3, 6]]
    classes = [type(timm.create_model(n, img_size=32)).__name__ for n in NEW]
    assert classes == ["T2TViT", "T2TViT", "PyramidVisionTransformer", "CCT"]


# -- parameter counts ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_the_paper(name):
    count = param_count(name, *PUBLISHED_AT[name])
    published = PUBLISHED_PARAMS[name] * 1e6
    assert abs(count - published) / published < PARAM_TOLERANCE, f"{name}: {count:,} vs published {published:,.0f}"


def test_exact_parameter_counts_of_raylg_students():
    assert param_count("t2t_vit_7") == 4_255_694
    assert param_count("t2t_vit_14") == 21_465_806
    assert param_count("pvt_tiny") == 13_229_288
    assert param_count("cct_7_3x1_32", img_size=32, num_classes=10) == 3_760_139  # exactly the published 3.76M
    assert param_count("cct_7_3x1_32", img_size=32, num_classes=100) == 3_783_269


def test_t2t_counts_with_frozen_tensors_equal_the_official_code():
    # the official code keeps its sinusoid table and performer projections as frozen
    # Parameters and counts them; raylg keeps them as buffers
    with torch.device("meta"):
        model = timm.create_model("t2t_vit_7")
    t2t = model.tokens_to_token
    frozen = model.pos_embed.numel() + t2t.attention1.w.numel() + t2t.attention2.w.numel()
    assert param_count("t2t_vit_7") + frozen == 4_310_222


# -- shapes and training at 32 -----------------------------------------------------------------


@pytest.mark.parametrize("name, img_size", sorted(SHAPES))
def test_logits_and_block_maps_shapes(name, img_size):
    model = seeded_student(name, img_size=img_size, num_classes=100).eval()
    blocks = default_layer_map(name)
    with torch.no_grad():
        logits, maps = forward_with_blocks(model, random_images(img_size, batch=1), blocks)
    assert logits.shape == (1, 100)
    assert [tuple(m.shape[1:]) for m in maps] == SHAPES[(name, img_size)]
    assert block_channels(model, blocks) == [s[0] for s in SHAPES[(name, img_size)]]


@pytest.mark.parametrize("name", NEW)
def test_trains_at_32_with_finite_grads(name):
    model = seeded_student(name, in_chans=1, num_classes=7, drop_path=0.1).train()
    logits, maps = forward_with_blocks(model, random_images(in_chans=1), default_layer_map(name))
    (logits.logsumexp(1).mean() + sum(m.square().mean() for m in maps)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(p.requires_grad for p in model.parameters())
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if g is None]


# -- block maps agree with the models' own forwards -----------------------------------------------


def _t2t_direct(model, x):
    tokens, (H, W) = model.tokens_to_token(x)
    t = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1) + model.pos_embed
    maps = []
    for block in model.blocks:
        t = block(t)
        maps.append(t[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, H, W))
    return maps, model.forward_head(model.norm(t))


def _pvt_direct(model, x):
    maps = []
    for stage in model.stages:
        H, W = (n // stage.patch_embed.patch_size[0] for n in x.shape[-2:])
        t = stage.patch_embed(x)
        if stage.cls_token is not None:
            t = torch.cat((stage.cls_token.expand(x.shape[0], -1, -1), t), dim=1)
        t = t + stage.pos_embed  # built for this size: no resampling
        for block in stage.blocks:
            t = block(t, (H, W))
            maps.append(t[:, stage.num_prefix_tokens :].transpose(1, 2).reshape(x.shape[0], -1, H, W))
        x = maps[-1]
    return maps, model.head(model.norm(t)[:, 0])


def _cct_direct(model, x):
    grid = model.tokenizer(x)
    t = grid.flatten(2).transpose(1, 2) + model.pos_embed
    maps = []
    for block in model.blocks:
        t = block(t)
        maps.append(t.transpose(1, 2).reshape(grid.shape))
    t = model.norm(t)
    pooled = (torch.softmax(model.attention_pool(t), dim=1) * t).sum(1)  # sequence pooling
    return maps, model.head(pooled)


@pytest.mark.parametrize("name, direct", [("t2t_vit_7", _t2t_direct), ("pvt_tiny", _pvt_direct), ("cct_7_3x1_32", _cct_direct)])
def test_block_maps_equal_a_direct_walk_and_logits_equal_model(name, direct):
    model, x = seeded_student(name).eval(), random_images()
    blocks = list(range(num_blocks(model)))
    with torch.no_grad():
        expected, expected_logits = direct(model, x)
        logits, maps = forward_with_blocks(model, x, blocks)
        assert same(logits, model(x)) and same(logits, expected_logits)
        assert all(torch.equal(a, b) for a, b in zip(maps, expected)) and len(maps) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(block_features(model, x, blocks), expected))


@pytest.mark.parametrize("name", NEW)
def test_forward_intermediates_follows_timm(name):
    model, x = seeded_student(name).eval(), random_images()
    n = num_blocks(model)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert same(final, model.forward_features(x)) and len(maps) == n
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True, stop_early=True)
        assert all(torch.equal(a, b) for a, b in zip(last2, maps[-2:]))
        tokens = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", intermediates_only=True)[0]
        assert torch.equal(tokens.transpose(1, 2).reshape(maps[-1].shape), maps[-1])
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        assert same(normed, model.norm(maps[-1].flatten(2).transpose(1, 2)).transpose(1, 2).reshape(maps[-1].shape))
    with pytest.raises(ModelError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


# -- variants, other input sizes, checkpoints ------------------------------------------------------------


def test_t2t_transformer_tokens_type():
    model = seeded_student("t2t_vit_7", tokens_type="transformer").eval()
    assert type(model.tokens_to_token.attention1).__name__ == "TokenTransformer"
    assert model(random_images()).shape == (2, 10)
    with torch.device("meta"):
        assert sum(p.numel() for p in timm.create_model("t2t_vit_7", tokens_type="transformer").parameters()) == 4_255_310
    with pytest.raises(ModelError, match="tokens_type 'conv'"):
        seeded_student("t2t_vit_7", tokens_type="conv")


def test_other_input_size_than_built_for():
    x64 = random_images(64, batch=1)
    with torch.no_grad():
        pvt = seeded_student("pvt_tiny").eval()  # learned positions resampled per stage
        assert [tuple(m.shape[1:]) for m in block_features(pvt, x64, [0, 3, 7])] == [(64, 16, 16), (128, 8, 8), (512, 2, 2)]
        t2t = seeded_student("t2t_vit_7").eval()  # sinusoid table recomputed for 16 tokens
        assert torch.equal(t2t(x64), seeded_student("t2t_vit_7", img_size=64).eval()(x64))
        cct = seeded_student("cct_7_3x1_32", pos_embed="sine").eval()
        assert torch.equal(cct(x64), seeded_student("cct_7_3x1_32", img_size=64, pos_embed="sine").eval()(x64))
        assert seeded_student("cct_7_3x1_32").eval()(x64).shape == (1, 10)


def test_cct_sine_positions_are_fixed():
    model = seeded_student("cct_7_3x1_32", pos_embed="sine")
    assert "pos_embed" not in dict(model.named_parameters()) and "pos_embed" not in model.state_dict()
    assert param_count("cct_7_3x1_32", 32, 10) - sum(p.numel() for p in model.parameters()) == 256 * 256


def test_t2t_state_dict_reproduces_the_model():
    # the performer's random projection is a persistent buffer: a checkpoint restores it
    a = seeded_student("t2t_vit_7").eval()
    torch.manual_seed(1)
    b = create_student("t2t_vit_7", 32, 3, 10).eval()
    assert not torch.equal(a.tokens_to_token.attention1.w, b.tokens_to_token.attention1.w)
    assert "tokens_to_token.attention1.w" in a.state_dict() and "pos_embed" not in a.state_dict()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.equal(a(random_images()), b(random_images()))


def test_performer_is_finite_under_bf16_autocast():
    model = seeded_student("t2t_vit_7").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(random_images() * 10)).all()


@pytest.mark.parametrize(
    "name, img_size, match",
    [
        ("t2t_vit_7", 40, "40 is not divisible by the total stride 16"),
        ("pvt_tiny", 48, "48 is not divisible by the total stride 32"),
        ("cct_7_3x1_32", 33, "33 is not divisible by the total stride 2"),
    ],
)
def test_image_size_must_fit_the_stride(name, img_size, match):
    with pytest.raises(ModelError, match=f"{name} cannot take {img_size}x{img_size} input: image size {match}"):
        create_student(name, img_size, 3, 10)


def test_no_pretrained_weights():
    for name in NEW:
        with pytest.raises(ModelError, match="no pretrained weights"):
            timm.create_model(name, pretrained=True)
