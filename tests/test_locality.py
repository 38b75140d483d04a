"""Locality guidance: the loss, its gradients, beta, layer maps, aligner checkpoints, teachers."""

import json

import pytest
import torch

from conftest import tiny_config
from raylg import checkpoint, teacher as teacher_lib
from raylg.config import ConfigError, load as load_config
from raylg.fit import fit, setup
from raylg.guidance import Context, LocalityGuidance, TeacherOut
from raylg.guidance.locality import pair_mse
from raylg.models import ModelError, create_teacher
from raylg.task import build_task


def lg_task(beta=2.5, blocks=(0, 2, 3), model="deit_micro_patch4_32"):
    torch.manual_seed(0)
    teacher = create_teacher("resnet20_cifar", in_chans=1, num_classes=10)
    online = teacher_lib.OnlineTeacher(teacher, img_size=32)
    cfg = load_config(None, {"model.name": model, "guidance.locality.beta": beta,
                             "guidance.locality.student_blocks": list(blocks), "model.drop_path": 0.0})
    return build_task(cfg, in_chans=1, num_classes=10, teacher_channels=[16, 32, 64], targets=online), teacher


def batch(n=4, size=32):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 1, size, size, generator=g), "label": torch.arange(n) % 10, "index": torch.arange(n)}


def test_identical_maps_give_zero_loss():
    t = torch.randn(2, 16, 8, 8)
    assert pair_mse(t, t.clone()) == 0
    term = LocalityGuidance([0], [16], [0], [16], beta=2.5)
    with torch.no_grad():  # identity aligner
        term.aligners[0].weight.copy_(torch.eye(16)[:, :, None, None])
        term.aligners[0].bias.zero_()
    loss, stats = term(Context(batch={}, logits=None, features={0: t}, teacher=TeacherOut(stages=[t.clone()])))
    assert loss == 0 and stats["mse"] == 0


def test_maps_are_resized_to_the_larger_size():
    small, big = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 8, 8)
    up = torch.nn.functional.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(pair_mse(small, big), ((up - big) ** 2).mean())
    assert torch.allclose(pair_mse(big, small), ((big - up) ** 2).mean())


def test_gradients_reach_student_and_aligners_never_the_teacher():
    task, teacher = lg_task()
    out = task(batch())
    sum(out["losses"].values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.terms["lg"].aligners.parameters())
    assert task.student.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in task.parameters() for q in teacher.parameters())  # not in the optimizer's view


def test_beta_scales_only_the_guidance_term():
    losses = {}
    for beta in (1.0, 2.5):
        task, _ = lg_task(beta=beta)
        torch.manual_seed(1)
        losses[beta] = task(batch())["losses"]
    assert torch.equal(losses[1.0]["ce"], losses[2.5]["ce"])
    assert torch.allclose(losses[2.5]["lg"], 2.5 * losses[1.0]["lg"])


def test_beta_zero_reproduces_the_baseline(tmp_path, digits_teacher):
    base = fit(tiny_config(tmp_path, **{"run.name": "base"}), tmp_path / "base")
    zero = fit(tiny_config(tmp_path, **{"run.name": "zero", "teacher.path": str(digits_teacher),
                                        "guidance.locality.beta": 0.0}), tmp_path / "zero")
    a = [json.loads(l) for l in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "zero" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/ce"] for r in a] == [r["train/ce"] for r in b]
    assert [r["train/loss"] for r in a] == [r["train/loss"] for r in b]
    assert [r["val/top1"] for r in a] == [r["val/top1"] for r in b]
    assert all(r["train/lg"] == 0 and r["train/lg_mse"] > 0 for r in b)  # computed and logged, weighted by 0
    assert base["best"] == zero["best"]


def test_lg_run_with_a_trained_teacher(tmp_path, digits_teacher):
    card = json.loads(digits_teacher.with_suffix(".json").read_text())
    assert card["arch"] == "resnet20_cifar" and card["stage_channels"] == [16, 32, 64] and card["val_top1"] > 10
    cfg = tiny_config(tmp_path, **{"teacher.path": str(digits_teacher), "schedule.epochs": 3})
    fit(cfg, tmp_path / "lg")
    rows = [json.loads(l) for l in (tmp_path / "lg" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train/lg"] > 0 for r in rows) and rows[-1]["train/lg_mse"] < rows[0]["train/lg_mse"]
    for key in ("train/lg_mse0", "train/lg_mse1", "train/lg_mse2", "train/ce"):
        assert key in rows[0]
    # the exported student has no aligners; the checkpoint has them
    exported = checkpoint.load_file(str(tmp_path / "lg" / "student.safetensors"))
    assert not any("aligners" in k for k in exported)
    saved = checkpoint.load_file(str(tmp_path / "lg" / "checkpoints" / "last" / checkpoint.MODEL_FILE))
    assert any(k.startswith("terms.lg.aligners.") for k in saved)


def test_checkpoint_restores_aligners_bit_for_bit(tmp_path):
    task, _ = lg_task()
    opt = torch.optim.AdamW(task.parameters())
    sum(task(batch())["losses"].values()).backward()
    opt.step()
    checkpoint.save(tmp_path / "c", module=task, optimizer=opt, cfg=load_config(None), epoch=0, step=1)
    fresh, _ = lg_task()
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    torch.manual_seed(123)
    checkpoint.load(tmp_path / "c", module=fresh, optimizer=fresh_opt)
    for (n, p), (m, q) in zip(task.state_dict().items(), fresh.state_dict().items()):
        assert n == m and torch.equal(p, q), n
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], fresh_opt.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize("model, blocks, shapes", [
    ("deit_micro_patch4_32", [0, 2, 3], [(64, 8, 8)] * 3),
    ("pvt_v2_micro", [0, 1, 3], [(32, 8, 8), (48, 4, 4), (96, 1, 1)]),
])
def test_default_layer_map_picks_the_documented_blocks(model, blocks, shapes):
    cfg = load_config(None, {"model.name": model})
    task = build_task(cfg, in_chans=1, num_classes=10, teacher_channels=[16, 32, 64])
    assert task.terms["lg"].student_blocks == blocks
    assert [a.in_channels for a in task.terms["lg"].aligners] == [s[0] for s in shapes]
    assert [a.out_channels for a in task.terms["lg"].aligners] == [16, 32, 64]


def test_wrong_layer_maps_fail_at_build_time():
    with pytest.raises(ModelError, match=r"student_blocks \[0, 2, 9\].*out of range.*num_blocks=4"):
        build_task(load_config(None, {"model.name": "deit_micro_patch4_32", "guidance.locality.student_blocks": [0, 2, 9]}),
                   in_chans=1, num_classes=10, teacher_channels=[16, 32, 64])
    with pytest.raises(ConfigError, match="one block per teacher stage"):
        load_config(None, {"guidance.locality.student_blocks": [0, 1]})
    with pytest.raises(ModelError, match="teacher_stages.*out of range"):
        build_task(load_config(None, {"model.name": "deit_micro_patch4_32", "guidance.locality.teacher_stages": [0, 1, 5]}),
                   in_chans=1, num_classes=10, teacher_channels=[16, 32, 64])


def test_teacher_input_is_the_student_image_resized():
    teacher = create_teacher("resnet20_cifar", in_chans=1, num_classes=10).eval()
    online = teacher_lib.OnlineTeacher(teacher, img_size=16, bn_mode="eval")
    b = batch(size=32)
    out = online(b)
    small = torch.nn.functional.interpolate(b["image"], size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(out.stages[2], teacher.forward_stages(small)[2])
    assert [tuple(s.shape[1:]) for s in out.stages] == [(16, 16, 16), (32, 8, 8), (64, 4, 4)]
    assert not teacher.training  # eval mode kept; the default "train" uses batch statistics
    teacher_lib.OnlineTeacher(teacher, img_size=16)(b)
    assert teacher.training


def test_bad_teachers_are_refused(tmp_path, digits_teacher):
    import shutil

    with pytest.raises(teacher_lib.TeacherError, match="not found"):
        teacher_lib.load(tmp_path / "missing.safetensors")
    copy = tmp_path / "t.safetensors"
    shutil.copy(digits_teacher, copy)
    shutil.copy(digits_teacher.with_suffix(".json"), copy.with_suffix(".json"))
    raw = bytearray(copy.read_bytes())
    raw[-3] ^= 0xFF  # one flipped byte in the weights
    copy.write_bytes(bytes(raw))
    with pytest.raises(teacher_lib.TeacherError, match="corrupt or was replaced"):
        teacher_lib.load(copy)
    # trained on other data: all of digits vs a 20-per-class subset
    cfg = tiny_config(tmp_path, **{"teacher.path": str(digits_teacher), "data.per_class": 20})
    with pytest.raises(teacher_lib.TeacherError, match=r"other data than this run \(per_class: teacher 0 vs run 20"):
        setup(cfg)
    card = json.loads(digits_teacher.with_suffix(".json").read_text())
    with pytest.raises(teacher_lib.TeacherError, match="has 10 classes but the run's data has 100"):
        teacher_lib.check_data(card, card["fingerprint"], 100, "t")
    with pytest.raises(teacher_lib.TeacherError, match="trained at 32px"):
        setup(tiny_config(tmp_path, **{"teacher.path": str(digits_teacher), "teacher.img_size": 16}))
