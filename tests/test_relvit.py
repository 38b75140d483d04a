"""RelViT's patch-relation tasks: targets, heads, composition, the self-supervised stage
(guidance.ce_weight 0, patch shuffle), run.init_from, and the errors before training."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import Crash, CrashAfter, tiny_config
from raylg import checkpoint
from raylg.checkpoint import CheckpointError
from raylg.config import ConfigError, apply_overrides, load as load_config
from raylg.fit import fit, setup
from raylg.guidance import Context, PatchShuffle
from raylg.guidance.relvit import POSITIONS_KEY, PairScores, distance_targets, relation_targets
from raylg.models import ModelError, create_classifier
from raylg.preflight import preflight
from raylg.task import build_optimizer, build_task, check_terms

RELVIT = {"guidance.relvit.weight": 1.0}
SSL = {"guidance.relvit.weight": 1.0, "guidance.relvit.shuffle": True, "guidance.ce_weight": 0.0}


def task_with(overrides, model="deit_micro_patch4_32"):
    cfg = load_config(None, {"model.name": model, "model.drop_path": 0.0, **overrides})
    torch.manual_seed(0)
    return build_task(cfg, in_chans=1, num_classes=10)


def batch(n=4):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 1, 32, 32, generator=g), "label": torch.arange(n) % 10, "index": torch.arange(n)}


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- targets and heads ------------------------------------------------------------------------


def test_relation_targets_on_a_3x3_grid():
    # class of token i relative to token j: 0 LU 1 CU 2 RU / 3 LC 4 CC 5 RC / 6 LD 7 CD 8 RD
    # (the table RelViT's create_connectivity_matrix gives for a 3x3 grid)
    want = [[4, 3, 3, 1, 0, 0, 1, 0, 0],
            [5, 4, 3, 2, 1, 0, 2, 1, 0],
            [5, 5, 4, 2, 2, 1, 2, 2, 1],
            [7, 6, 6, 4, 3, 3, 1, 0, 0],
            [8, 7, 6, 5, 4, 3, 2, 1, 0],
            [8, 8, 7, 5, 5, 4, 2, 2, 1],
            [7, 6, 6, 7, 6, 6, 4, 3, 3],
            [8, 7, 6, 8, 7, 6, 5, 4, 3],
            [8, 8, 7, 8, 8, 7, 5, 5, 4]]
    assert relation_targets(torch.arange(9)[None], 3)[0].tolist() == want
    # a 2x3 grid: token 5 (row 1, col 2) is right-down of token 0 and right of token 3
    t = relation_targets(torch.arange(6)[None], 3)[0]
    assert (t[5, 0], t[5, 3], t[0, 5], t[1, 4]) == (8, 5, 0, 1)


def test_distance_targets_on_a_2x2_grid():
    d = distance_targets(torch.arange(4)[None], 2, 2)[0]
    r2 = math.sqrt(2)
    want = torch.tensor([[0, 1, 1, r2], [1, 0, r2, 1], [1, r2, 0, 1], [r2, 1, 1, 0]]) / r2 * 2 - 1
    assert torch.allclose(d, want) and d.min() == -1 and d.max() == 1


def test_pair_scores_are_per_class_scaled_dot_products():
    torch.manual_seed(0)
    head = PairScores(channels=18, k=9)
    tokens = torch.randn(2, 5, 18)
    out = head(tokens)
    assert out.shape == (2, 5, 5, 9) and head.dim == 2
    for k in (0, 4, 8):
        q = tokens @ head.q.weight[2 * k:2 * k + 2].T
        key = tokens @ head.key.weight[2 * k:2 * k + 2].T
        assert torch.allclose(out[..., k], q @ key.transpose(1, 2) / math.sqrt(2), atol=1e-6)


def test_relation_and_position_losses_are_the_heads_ce():
    task = task_with({"guidance.relvit.weight": 0.5, "guidance.relvit.positions": 2.0, "guidance.relvit.distances": 1.0})
    assert list(task.terms) == ["relvit_rel", "relvit_pos", "relvit_dist"] and task.needs_tokens
    rel, pos, dist = task.terms.values()
    assert (rel.weight, pos.weight, dist.weight) == (0.5, 1.0, 0.5)
    assert rel.grid == (8, 8) and pos.head.out_features == 64 and rel.head.dim == 64 // 9
    tokens = torch.randn(3, 64, 8, 8)
    ctx = Context(batch={}, logits=None, tokens=tokens)
    flat = tokens.flatten(2).transpose(1, 2)
    loss, stats = rel(ctx)
    want = F.cross_entropy(rel.head(flat).permute(0, 3, 1, 2), relation_targets(torch.arange(64).expand(3, -1), 8))
    assert torch.allclose(stats["ce"], want) and torch.allclose(loss, 0.5 * want)
    loss, stats = pos(ctx)
    want = F.cross_entropy(pos.head(flat).transpose(1, 2), torch.arange(64).expand(3, -1))
    assert torch.allclose(stats["ce"], want) and torch.allclose(loss, want)
    assert 0 <= stats["acc"] <= 100
    loss, stats = dist(ctx)
    want = F.mse_loss(dist.head(flat)[..., 0], distance_targets(torch.arange(64).expand(3, -1), 8, 8))
    assert torch.allclose(stats["mse"], want) and torch.allclose(loss, 0.5 * want)


def test_patch_shuffle_moves_blocks_and_records_where_they_came_from():
    ids = torch.arange(16.0).reshape(1, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3)  # 4x4 blocks of 8px
    img = torch.cat([ids, ids + 100])  # 2 images, 32x32, each block filled with its id
    torch.manual_seed(3)
    out = PatchShuffle((4, 4))({"image": img, "label": torch.zeros(2)})
    perm = out[POSITIONS_KEY]
    assert perm.shape == (2, 16) and sorted(perm[0].tolist()) == list(range(16)) and not torch.equal(perm[0], perm[1])
    for b in range(2):
        for slot in range(16):
            r, c = divmod(slot, 4)
            block = out["image"][b, 0, 8 * r:8 * r + 8, 8 * c:8 * c + 8]
            assert torch.all(block == perm[b, slot] + 100 * b)
    # the relation of slot i to slot j is that of the blocks they hold
    t = relation_targets(perm, 4)
    ident = relation_targets(torch.arange(16)[None], 4)[0]
    assert torch.equal(t[0], ident[perm[0]][:, perm[0]])


# -- the task: composition, ownership, baseline ------------------------------------------------


def test_relvit_heads_belong_to_the_task_optimizer_and_checkpoint(tmp_path):
    task = task_with(RELVIT)
    assert list(task.terms) == ["relvit_rel", "relvit_pos"]  # distances off by default, as in their scripts
    opt = build_optimizer(task, load_config(None).optim)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in task.terms.parameters())
    out = task(batch())
    assert set(out["losses"]) == {"ce", "relvit_rel", "relvit_pos"}
    assert {"relvit_rel_ce", "relvit_rel_acc", "relvit_pos_ce", "relvit_pos_acc"} == set(out["stats"])
    sum(out["losses"].values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.terms.parameters())
    opt.step()
    checkpoint.save(tmp_path / "c", module=task, optimizer=opt, cfg=load_config(None), epoch=0, step=1)
    saved = checkpoint.load_file(str(tmp_path / "c" / checkpoint.MODEL_FILE))
    assert {"terms.relvit_rel.head.q.weight", "terms.relvit_rel.head.key.weight", "terms.relvit_pos.head.weight"} <= set(saved)
    fresh = task_with(RELVIT)
    checkpoint.load(tmp_path / "c", module=fresh)
    for name, value in task.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_relvit_composes_with_drloc_and_lg():
    from raylg import teacher as teacher_lib
    from raylg.models import create_teacher

    online = teacher_lib.OnlineTeacher(create_teacher("resnet20_cifar", in_chans=1, num_classes=10), img_size=32)
    cfg = load_config(None, {"model.name": "deit_micro_patch4_32", **RELVIT, "guidance.drloc.weight": 0.5,
                             "guidance.locality.transform": "attention"})
    task = build_task(cfg, in_chans=1, num_classes=10, teacher_channels=[16, 32, 64], targets=online)
    out = task(batch())
    assert set(out["losses"]) == {"ce", "lg", "drloc", "relvit_rel", "relvit_pos"}
    assert all(torch.isfinite(v) and v > 0 for v in out["losses"].values())


def test_weight_zero_builds_nothing_and_leaves_the_baseline():
    states, losses = [], []
    for overrides in ({}, {"guidance.relvit.distances": 1.0, "guidance.relvit.positions": 3.0, "guidance.ce_weight": 1.0}):
        task = task_with(overrides)
        assert not len(task.terms) and task.prepare is None and not task.needs_tokens
        losses.append(task(batch())["losses"])
        states.append((torch.get_rng_state(), task.state_dict()))
    assert torch.equal(states[0][0], states[1][0])  # no random numbers drawn
    assert all(torch.equal(states[0][1][k], states[1][1][k]) for k in states[0][1])
    assert losses[0].keys() == losses[1].keys() == {"ce"} and torch.equal(losses[0]["ce"], losses[1]["ce"])


def test_ce_weight_scales_ce_and_zero_reads_no_labels():
    half, full = task_with({"guidance.ce_weight": 0.5, **RELVIT}), task_with(RELVIT)
    assert torch.allclose(half(batch())["losses"]["ce"], 0.5 * full(batch())["losses"]["ce"])
    task = task_with(SSL)
    head = {n: p.detach().clone() for n, p in task.student.named_parameters() if n.startswith("head.")}
    assert set(head) == {"head.weight", "head.bias"}
    assert not any(p.requires_grad for n, p in task.student.named_parameters() if n.startswith("head."))
    assert all(p.requires_grad for n, p in task.student.named_parameters() if not n.startswith("head."))
    opt = build_optimizer(task, load_config(None).optim)
    b = batch()
    del b["label"]  # the self-supervised stage never reads a label
    out = task(b)
    assert set(out["losses"]) == {"relvit_rel", "relvit_pos"}
    sum(out["losses"].values()).backward()
    assert all(p.grad is not None for p in task.parameters() if p.requires_grad)  # DDP: no unused parameters
    opt.step()
    assert all(torch.equal(p, head[n]) for n, p in task.student.named_parameters() if n in head)


# -- bad input, before training ----------------------------------------------------------------


def test_relvit_on_pit_fails_at_build_time_and_in_preflight():
    cfg = load_config(None, {"model.name": "pit_ti_224", **RELVIT})
    msg = (r"guidance.relvit: student 'pit_ti_224' keeps no final patch-token grid"
           r".*students that support it: .*deit_tiny_patch4_32.*pvt_v2_b0")
    with pytest.raises(ModelError, match=msg):
        build_task(cfg, in_chans=1, num_classes=10)
    with pytest.raises(ModelError, match=msg):
        check_terms(cfg)  # on the meta device
    with pytest.raises(ModelError, match=msg):
        preflight(cfg)  # what jobs/train.py and jobs/sweep.py run on every point first
    with pytest.raises(ModelError, match="'pvt_tiny' at 32px has a 1x1 final token grid"):
        check_terms(load_config(None, {"model.name": "pvt_tiny", **RELVIT}))


@pytest.mark.parametrize("overrides, match", [
    ({"guidance.relvit.weight": -1.0}, "guidance.relvit.weight: -1.0 is out of range"),
    ({"guidance.relvit.positions": float("nan")}, "guidance.relvit.positions"),
    ({"guidance.relvit.weight": 1.0, "guidance.relvit.relations": 0.0, "guidance.relvit.positions": 0.0},
     "every RelViT task is off"),
    ({"guidance.relvit.weight": 1.0, "guidance.relvit.shuffle": True}, "shuffle only in the self-supervised stage"),
    ({"guidance.ce_weight": -0.5}, "guidance.ce_weight: -0.5 is out of range"),
    ({"run.init_fron": "x"}, "did you mean run.init_from"),
])
def test_bad_relvit_configs_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_ce_weight_zero_with_nothing_else_on_is_refused():
    cfg = load_config(None, {"guidance.ce_weight": 0.0})
    with pytest.raises(ConfigError, match="guidance.ce_weight is 0 and no guidance term is on"):
        check_terms(cfg)
    with pytest.raises(ConfigError, match="nothing would train"):
        build_task(cfg, in_chans=1, num_classes=10)
    check_terms(cfg, teacher=True)  # LG alone is something to train


# -- end to end: joint, upstream then downstream, exact resume, init_from errors ------------------


def test_joint_run_logs_each_task_and_exports_the_student_alone(tmp_path):
    fit(tiny_config(tmp_path, **RELVIT, **{"run.max_train_batches": 2}), tmp_path / "joint")
    for r in rows(tmp_path / "joint"):
        terms = [r[f"train/{k}"] for k in ("ce", "relvit_rel", "relvit_pos")]
        assert all(v > 0 for v in terms) and r["train/loss"] == pytest.approx(sum(terms), rel=1e-6)
        assert {"train/relvit_rel_acc", "train/relvit_pos_ce"} <= set(r)
    saved = checkpoint.load_file(str(tmp_path / "joint" / "checkpoints" / "last" / checkpoint.MODEL_FILE))
    assert any(k.startswith("terms.relvit_rel.") for k in saved) and any(k.startswith("terms.relvit_pos.") for k in saved)
    assert not any("relvit" in k for k in checkpoint.load_file(str(tmp_path / "joint" / "student.safetensors")))


def test_upstream_then_downstream_with_exact_resume(tmp_path):
    up = tiny_config(tmp_path, **SSL, **{"run.max_train_batches": 2, "run.name": "up"})
    fit(up, tmp_path / "up")
    with pytest.raises(Crash):
        fit(up, tmp_path / "broken", hooks=CrashAfter(1))
    fit(apply_overrides(up, {"run.resume": True}), tmp_path / "broken")
    a, b = rows(tmp_path / "up"), rows(tmp_path / "broken")
    assert "train/ce" not in a[0] and all(r["train/relvit_rel"] > 0 and r["train/relvit_pos"] > 0 for r in a)
    for key in ("train/relvit_rel", "train/relvit_pos", "train/relvit_rel_acc", "val/loss"):
        assert [r[key] for r in a] == [r[key] for r in b], key  # the same shuffles and heads after resume
    last = checkpoint.load_file(str(tmp_path / "up" / "checkpoints" / "last" / checkpoint.MODEL_FILE))
    resumed = checkpoint.load_file(str(tmp_path / "broken" / "checkpoints" / "last" / checkpoint.MODEL_FILE))
    assert all(torch.equal(last[k], resumed[k]) for k in last)

    # downstream: supervised, from the SSL run's last checkpoint (the run directory is enough)
    down = tiny_config(tmp_path, **{"run.init_from": str(tmp_path / "up"), "run.max_train_batches": 2, "run.name": "down",
                                    "schedule.epochs": 1, "schedule.warmup_epochs": 0})
    student = setup(down).task.student.state_dict()
    assert all(torch.equal(student[k[len("student."):]], v) for k, v in last.items() if k.startswith("student."))
    fresh = setup(apply_overrides(down, {"run.init_from": ""})).task.student.state_dict()
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], student["blocks.0.attn.qkv.weight"])
    fit(down, tmp_path / "down")
    assert rows(tmp_path / "down")[0]["train/ce"] > 0


def test_init_from_other_weights_is_refused_before_training(tmp_path):
    other_arch = create_classifier(load_config(None, {"model.name": "pvt_v2_micro"}).model, img_size=32, in_chans=1,
                                   num_classes=10)
    checkpoint.export_weights(other_arch, tmp_path / "pvt.safetensors", metadata={"model": "pvt_v2_micro"})
    other_classes = create_classifier(load_config(None, {"model.name": "deit_micro_patch4_32"}).model, img_size=32,
                                      in_chans=1, num_classes=5)
    checkpoint.export_weights(other_classes, tmp_path / "five.safetensors")
    cases = [
        ("pvt.safetensors", r"\(exported from model 'pvt_v2_micro'\) does not fit the student 'deit_micro_patch4_32' "
                            r"with 10 classes: shapes differ: patch_embed.proj.weight \(weights \(32, 1, 7, 7\) vs student "
                            r"\(64, 1, 4, 4\)\).*; missing from the weights: cls_token, pos_embed, .* and \d+ more; "
                            r"not in the student: .*stages.0.blocks.0.attn.kv.weight"),
        ("five.safetensors", r"with 10 classes: shapes differ: head.weight \(weights \(5, 64\) vs student \(10, 64\)\), "
                             r"head.bias \(weights \(5,\) vs student \(10,\)\)$"),
        ("missing", "not a run directory"),
    ]
    for name, match in cases:
        cfg = tiny_config(tmp_path, **{"run.init_from": str(tmp_path / name), "run.name": f"bad-{name}"})
        with pytest.raises(CheckpointError, match=match):
            fit(cfg, tmp_path / f"bad-{name}")
        assert not (tmp_path / f"bad-{name}" / "metrics.jsonl").exists()
