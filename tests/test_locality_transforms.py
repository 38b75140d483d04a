"""LG's feature transforms (the reference's DISTILLATION.INTER_TRANSFORM): linear, attention,
similarity, each checked against a hand computation on small tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from raylg import teacher as teacher_lib
from raylg.config import ConfigError, flatten, load as load_config
from raylg.guidance import Context, LocalityGuidance, TeacherOut
from raylg.guidance.locality import attention_transform, pair_mse, pair_transformed_mse, similarity_transform
from raylg.models import create_teacher
from raylg.task import build_task

# two images; student: 2 channels, teacher: 3 channels, both 1 x 2 maps
STUDENT = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]],
                        [[[1.0, 0.0]], [[0.0, 4.0]]]])
TEACHER = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]], [[1.0, 1.0]]],
                        [[[2.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])


def test_attention_transform_by_hand():
    # per pixel, the mean over channels of the squares; then each image's vector to unit length
    # student image 0: [(1+9)/2, (4+0)/2] = [5, 2]; image 1: [(1+0)/2, (0+16)/2] = [0.5, 8]
    want_s = [[5 / math.sqrt(29), 2 / math.sqrt(29)], [0.5 / math.sqrt(64.25), 8 / math.sqrt(64.25)]]
    # teacher image 0: [1, 1]; image 1: [4/3, 0]
    want_t = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1.0, 0.0]]
    assert torch.allclose(attention_transform(STUDENT), torch.tensor(want_s), atol=1e-6)
    assert torch.allclose(attention_transform(TEACHER), torch.tensor(want_t), atol=1e-6)
    want = sum((a - b) ** 2 for ra, rb in zip(want_s, want_t) for a, b in zip(ra, rb)) / 4
    assert float(pair_transformed_mse(STUDENT, TEACHER, "attention")) == pytest.approx(want, rel=1e-6)


def test_similarity_transform_by_hand():
    # flattened student: [1, 2, 3, 0] and [1, 0, 0, 4]: Gram [[14, 1], [1, 17]], rows to unit length
    want_s = [[14 / math.sqrt(197), 1 / math.sqrt(197)], [1 / math.sqrt(290), 17 / math.sqrt(290)]]
    # flattened teacher: six ones and [2, 0, 0, 0, 0, 0]: Gram [[6, 2], [2, 4]]
    want_t = [[6 / math.sqrt(40), 2 / math.sqrt(40)], [2 / math.sqrt(20), 4 / math.sqrt(20)]]
    assert torch.allclose(similarity_transform(STUDENT), torch.tensor(want_s), atol=1e-6)
    assert torch.allclose(similarity_transform(TEACHER), torch.tensor(want_t), atol=1e-6)
    want = sum((a - b) ** 2 for ra, rb in zip(want_s, want_t) for a, b in zip(ra, rb)) / 4
    assert float(pair_transformed_mse(STUDENT, TEACHER, "similarity")) == pytest.approx(want, rel=1e-6)


def test_maps_are_resized_to_the_larger_size_before_the_transform():
    g = torch.Generator().manual_seed(0)
    small, big = torch.randn(3, 5, 2, 2, generator=g), torch.randn(3, 7, 4, 4, generator=g)
    up = F.interpolate(small, size=(4, 4), mode="bilinear", align_corners=False)
    for name in ("attention", "similarity"):
        fn = {"attention": lambda f: (f ** 2).sum(1).flatten(1) / f.shape[1],
              "similarity": lambda f: f.flatten(1) @ f.flatten(1).T}[name]
        a, b = fn(up), fn(big)
        want = ((a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)) ** 2).mean()
        assert torch.allclose(pair_transformed_mse(small, big, name), want, atol=1e-7), name
        assert torch.allclose(pair_transformed_mse(big, small, name), want, atol=1e-7), name


def lg_task(transform, beta=2.5):
    torch.manual_seed(1)
    teacher = teacher_lib.OnlineTeacher(create_teacher("resnet20_cifar", in_chans=1, num_classes=10), img_size=32)
    cfg = load_config(None, {"model.name": "deit_micro_patch4_32", "model.drop_path": 0.0, "guidance.locality.beta": beta,
                             "guidance.locality.transform": transform})
    torch.manual_seed(0)  # as fit.setup: the student's init depends on the seed alone
    return build_task(cfg, in_chans=1, num_classes=10, teacher_channels=[16, 32, 64], targets=teacher)


def batch(n=4):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 1, 32, 32, generator=g), "label": torch.arange(n) % 10, "index": torch.arange(n)}


@pytest.mark.parametrize("transform", ["attention", "similarity"])
def test_parameter_free_transforms_in_the_task(transform):
    task = lg_task(transform)
    term = task.terms["lg"]
    assert term.transform == transform and len(term.aligners) == 0 and not list(term.parameters())
    b = batch()
    torch.manual_seed(1)
    out = task(b)
    torch.manual_seed(1)  # the same teacher pass (train-mode BN) and student pass, by hand
    stages = task.targets(b).stages
    from raylg.models import forward_trunk

    _, maps = forward_trunk(task.student, b["image"], term.student_blocks)
    pairs = [pair_transformed_mse(m, stages[s], transform) for m, s in zip(maps, term.teacher_stages)]
    for i, want in enumerate(pairs):
        assert torch.allclose(out["stats"][f"lg_mse{i}"], want, rtol=1e-5)
    assert torch.allclose(out["losses"]["lg"], 2.5 * sum(pairs), rtol=1e-5)
    sum(out["losses"].values()).backward()  # the student learns through the transform
    assert task.student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_linear_stays_the_aligner_and_mse():
    task = lg_task("linear")
    term = task.terms["lg"]
    assert term.transform == "linear" and [a.in_channels for a in term.aligners] == [64, 64, 64]
    t = TeacherOut(stages=[torch.randn(2, 16, 32, 32), torch.randn(2, 32, 16, 16), torch.randn(2, 64, 8, 8)])
    feats = {b: torch.randn(2, 64, 8, 8) for b in term.student_blocks}
    loss, stats = term(Context(batch={}, logits=None, features=feats, teacher=t))
    want = [pair_mse(a(feats[b]), t.stages[s]) for a, b, s in zip(term.aligners, term.student_blocks, term.teacher_stages)]
    assert all(torch.equal(stats[f"mse{i}"], w) for i, w in enumerate(want))
    assert torch.equal(loss, 2.5 * (0.0 + want[0] + want[1] + want[2]))


def test_transform_is_a_sweepable_field_and_bad_names_are_refused():
    assert load_config(None).guidance.locality.transform == "linear"
    cfg = load_config(None, {"guidance.locality.transform": "similarity"})
    assert flatten(cfg)["guidance.locality.transform"] == "similarity"
    with pytest.raises(ConfigError, match="guidance.locality.transform: 'gram' is not one of "
                                           "'linear', 'attention', 'similarity'"):
        load_config(None, {"guidance.locality.transform": "gram"})
    with pytest.raises(ValueError, match="guidance.locality.transform: 'gram'"):
        LocalityGuidance([0], [8], [0], [8], transform="gram")


def test_beta_zero_with_a_transform_leaves_the_baseline_loss():
    cfg = load_config(None, {"model.name": "deit_micro_patch4_32", "model.drop_path": 0.0})
    torch.manual_seed(0)
    base = build_task(cfg, in_chans=1, num_classes=10)
    task = lg_task("attention", beta=0.0)
    assert all(torch.equal(a, b) for a, b in zip(base.student.state_dict().values(), task.student.state_dict().values()))
    out_b, out_t = base(batch()), task(batch())
    assert torch.equal(out_b["losses"]["ce"], out_t["losses"]["ce"])
    assert out_t["losses"]["lg"] == 0 and out_t["stats"]["lg_mse"] > 0  # computed and logged, weighted by 0
