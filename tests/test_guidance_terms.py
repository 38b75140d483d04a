"""Guidance terms beside LG: DRLoc, DeiT's distillation token, logit KD; composition, logging, errors."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, Crash, CrashAfter, tiny_config
from raylg import checkpoint, teacher as teacher_lib
from raylg.config import ConfigError, load as load_config
from raylg.fit import fit, setup
from raylg.guidance import Context, DenseRelativeLocalization, TeacherOut, teacher_logit_classes
from raylg.guidance.distill import soft_kl
from raylg.guidance.drloc import gather_pairs, offsets, sample_pairs
from raylg.models import ModelError, block_features, create_student, create_teacher, has_token_grid, token_grid
from raylg.task import build_optimizer, build_task

ALL_ON = {"guidance.drloc.weight": 0.5, "guidance.distill_token.weight": 1.0, "guidance.kd.weight": 1.0}


def teacher(num_classes=10):
    torch.manual_seed(0)
    return teacher_lib.OnlineTeacher(create_teacher("resnet20_cifar", in_chans=1, num_classes=num_classes), img_size=32)


def task_with(overrides, targets="online", channels=(16, 32, 64)):
    cfg = load_config(None, {"model.name": "deit_micro_patch4_32", "model.drop_path": 0.0, **overrides})
    targets = teacher() if targets == "online" else targets
    return build_task(cfg, in_chans=1, num_classes=10, teacher_channels=None if targets is None else list(channels),
                      targets=targets)


def batch(n=4):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 1, 32, 32, generator=g), "label": torch.arange(n) % 10, "index": torch.arange(n)}


# -- DRLoc ---------------------------------------------------------------------------------


def position_grid(h, w):
    """1 x 2 x h x w tokens whose channels are their own (row, col)."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack((rows, cols)).float()[None]


def test_drloc_targets_for_known_pairs():
    h, w = 3, 5
    tokens = position_grid(h, w)
    p = torch.tensor([[0, 7, 14, 4]])  # (0,0) (1,2) (2,4) (0,4)
    q = torch.tensor([[14, 7, 0, 10]])  # (2,4) (1,2) (0,0) (2,0)
    pairs = gather_pairs(tokens, p, q)
    assert pairs.shape == (1, 4, 4)
    assert pairs[0].tolist() == [[0, 0, 2, 4], [1, 2, 1, 2], [2, 4, 0, 0], [0, 4, 2, 0]]  # token p, then token q
    assert offsets(p, q, w)[0].tolist() == [[-2, -4], [0, 0], [2, 4], [-2, 4]]  # (row_p - row_q, col_p - col_q)


def test_drloc_sampling_covers_the_grid_per_image():
    torch.manual_seed(0)
    p, q = sample_pairs(batch=3, h=4, w=2, m=500)
    assert p.shape == q.shape == (3, 500) and p.min() >= 0 and p.max() == 7 and q.max() == 7
    assert not torch.equal(p[0], p[1])  # drawn per image


def test_drloc_loss_is_weighted_l1_of_the_head_against_the_offsets():
    term = DenseRelativeLocalization(channels=2, weight=0.3, m=16)
    assert [l.in_features for l in term.head if isinstance(l, torch.nn.Linear)] == [4, 512, 512]
    assert term.head[-1].out_features == 2
    tokens = position_grid(4, 4).expand(2, -1, -1, -1)
    torch.manual_seed(5)
    loss, stats = term(Context(batch={}, logits=None, tokens=tokens))
    torch.manual_seed(5)
    p, q = sample_pairs(2, 4, 4, 16)
    want = F.l1_loss(term.head(gather_pairs(tokens, p, q)), offsets(p, q, 4))
    assert torch.allclose(stats["l1"], want) and torch.allclose(loss, 0.3 * want)


def test_drloc_head_belongs_to_the_task_optimizer_and_checkpoint(tmp_path):
    task = task_with({"guidance.drloc.weight": 0.5}, targets=None)
    assert list(task.terms) == ["drloc"] and task.needs_tokens
    assert task.terms["drloc"].head[0].in_features == 2 * 64  # 2C for deit_micro's final width
    opt = build_optimizer(task, load_config(None).optim)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in task.terms["drloc"].head.parameters())
    sum(task(batch())["losses"].values()).backward()
    opt.step()
    checkpoint.save(tmp_path / "c", module=task, optimizer=opt, cfg=load_config(None), epoch=0, step=1)
    fresh = task_with({"guidance.drloc.weight": 0.5}, targets=None)
    checkpoint.load(tmp_path / "c", module=fresh)
    for name, value in task.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name
    assert any(k.startswith("terms.drloc.head.") for k in checkpoint.load_file(str(tmp_path / "c" / checkpoint.MODEL_FILE)))


@pytest.mark.parametrize("name", ["deit_micro_patch4_32", "deit_micro_distilled_patch4_32", "t2t_vit_7", "cct_7_3x1_32"])
def test_token_grid_is_the_last_block_after_the_final_norm(name):
    torch.manual_seed(0)
    model = create_student(name, img_size=32, in_chans=1, num_classes=10).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        grid = token_grid(model, model.forward_features(x))
        last = block_features(model, x, [-1])[0]  # B x C x h x w, before the final norm
    normed = model.norm(last.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(last.shape)
    assert grid.shape == last.shape and torch.allclose(grid, normed, atol=1e-5)


def test_pvt_v2_token_grid_is_its_final_map():
    model = create_student("pvt_v2_micro", img_size=64, in_chans=1, num_classes=10).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.equal(token_grid(model, feats), feats) and feats.shape[-2:] == (2, 2)


# -- distillation token ---------------------------------------------------------------------


def test_distillation_token_builds_the_distilled_student_and_trains_its_head_on_hard_labels():
    task = task_with({"guidance.distill_token.weight": 0.7})
    assert type(task.student).__name__ == "VisionTransformerDistilled" and "dist" in task.terms
    task.train()
    b = batch()
    torch.manual_seed(1)
    out = task(b)
    cls, dist = task.student(b["image"])  # training mode: both heads
    hard = task.targets(b).logits.argmax(1)
    assert torch.allclose(out["losses"]["ce"], F.cross_entropy(cls, b["label"]))
    assert torch.allclose(out["losses"]["dist"], 0.7 * F.cross_entropy(dist, hard))
    assert torch.allclose(out["stats"]["dist_ce"], F.cross_entropy(dist, hard))
    sum(out["losses"].values()).backward()
    assert task.student.head_dist.weight.grad.abs().sum() > 0 and task.student.dist_token.grad.abs().sum() > 0


def test_distillation_token_eval_averages_the_two_heads():
    task = task_with({"guidance.distill_token.weight": 1.0})
    s = task.student
    with torch.no_grad():
        s.head_dist.weight.add_(1.0)  # make the heads disagree
        x = batch()["image"]
        task.eval()
        feats = s.forward_features(x)
        want = (s.head(feats[:, 0]) + s.head_dist(feats[:, 1])) / 2
        assert torch.allclose(task.predict(x), want, atol=1e-6)
        assert not torch.allclose(s.head(feats[:, 0]), want)
        task.train()  # predict averages even if called in training mode
        assert torch.allclose(task.predict(x), want, atol=1e-6)


@pytest.mark.parametrize("student", ["pvt_v2_micro", "t2t_vit_7", "cct_7_3x1_32", "pvt_tiny", "convit_tiny"])
def test_distillation_token_on_a_student_without_one_fails_at_build_time(student):
    cfg = load_config(None, {"model.name": student, "guidance.distill_token.weight": 1.0})
    with pytest.raises(ModelError, match=rf"guidance.distill_token: student '{student}' cannot carry a distillation token"
                                         r".*deit_tiny_patch4_32"):
        build_task(cfg, in_chans=1, num_classes=10, teacher_channels=[16, 32, 64], targets=teacher())


def test_pit_takes_its_distilled_variant():
    cfg = load_config(None, {"model.name": "pit_ti_224", "guidance.distill_token.weight": 1.0})
    task = build_task(cfg, in_chans=1, num_classes=10, teacher_channels=[16, 32, 64], targets=teacher())
    assert task.student.pretrained_cfg["architecture"] == "pit_ti_distilled_224"
    out = task(batch(2))
    assert set(out["losses"]) == {"ce", "lg", "dist"}


# -- logit KD -------------------------------------------------------------------------------


def test_soft_kl_values():
    s, t = torch.randn(3, 10), torch.randn(3, 10)
    assert soft_kl(t, t, 4.0).abs() < 1e-6
    p_t = F.softmax(t / 2.0, 1)
    want = (p_t * (p_t.log() - F.log_softmax(s / 2.0, 1))).sum(1).mean() * 4.0
    assert torch.allclose(soft_kl(s, t, 2.0), want, atol=1e-6)


def test_kd_term_on_the_class_logits_with_teacher_logits():
    task = task_with({"guidance.kd.weight": 2.0, "guidance.kd.tau": 3.0})
    b = batch()
    torch.manual_seed(0)
    out = task(b)
    torch.manual_seed(0)
    want = soft_kl(task.student(b["image"]), task.targets(b).logits, 3.0)
    assert torch.allclose(out["stats"]["kd_kl"], want) and torch.allclose(out["losses"]["kd"], 2.0 * want)


@pytest.mark.parametrize("key", ["guidance.kd.weight", "guidance.distill_token.weight"])
def test_logit_terms_need_a_teacher_with_a_classifier(key):
    with pytest.raises(ConfigError, match=rf"{key} > 0 needs the teacher's logits, but no teacher is loaded; set teacher.path"):
        task_with({key: 1.0}, targets=None)

    class Shards:  # like raylg.features' ShardTeacher: stage maps, no logits
        def __call__(self, batch):
            return TeacherOut(stages=[], logits=None)

    with pytest.raises(ModelError, match=r"has no classifier head \(feature shards"):
        task_with({key: 1.0}, targets=Shards())
    headless = teacher_lib.OnlineTeacher(create_teacher("resnet20_cifar", in_chans=1, num_classes=0), img_size=32)
    assert teacher_logit_classes(headless) == 0
    with pytest.raises(ModelError, match="has no classifier head"):
        task_with({key: 1.0}, targets=headless)
    with pytest.raises(ModelError, match="classifier has 100 classes but the run has 10"):
        task_with({key: 1.0}, targets=teacher(num_classes=100))


def test_a_run_with_kd_and_no_teacher_stops_before_training(tmp_path):
    cfg = tiny_config(tmp_path, **{"guidance.kd.weight": 1.0})
    with pytest.raises(ConfigError, match="set teacher.path"):
        setup(cfg)


# -- DRLoc needs a token grid -----------------------------------------------------------------


def test_drloc_on_a_student_without_a_token_grid_fails_at_build_time():
    cfg = load_config(None, {"model.name": "pit_ti_224", "guidance.drloc.weight": 0.5})
    with pytest.raises(ModelError, match="guidance.drloc: student 'pit_ti_224' keeps no final patch-token grid"):
        build_task(cfg, in_chans=1, num_classes=10)
    assert not has_token_grid(create_student("pit_ti_224", img_size=32, in_chans=1, num_classes=10))
    cfg = load_config(None, {"model.name": "pvt_v2_micro", "guidance.drloc.weight": 0.5})  # 1x1 grid at 32 px
    with pytest.raises(ModelError, match="pvt_v2_micro' at 32px has a 1x1 final token grid"):
        build_task(cfg, in_chans=1, num_classes=10)


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, match", [
    ({"guidance.drloc.weight": -0.1}, "guidance.drloc.weight: -0.1 is out of range"),
    ({"guidance.kd.weight": float("inf")}, "guidance.kd.weight: inf is out of range"),
    ({"guidance.distill_token.weight": float("nan")}, "guidance.distill_token.weight"),
    ({"guidance.drloc.m": 0}, "guidance.drloc.m: 0 is out of range"),
    ({"guidance.kd.tau": 0.0}, "guidance.kd.tau: 0.0 is out of range"),
    ({"guidance.kd.weight": 1.0, "guidance.locality.source": "shards", "guidance.locality.shards": "m.json"},
     "guidance.kd.weight is 1.0 but guidance.locality.source is 'shards'"),
    ({"guidance.drloc.lambda": 0.1}, "unknown config key 'guidance.drloc.lambda'"),
])
def test_bad_term_configs_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_terms_are_off_by_default_and_off_terms_draw_no_random_numbers():
    cfg = load_config(None)
    assert (cfg.guidance.drloc.weight, cfg.guidance.drloc.m, cfg.guidance.distill_token.weight,
            cfg.guidance.kd.weight, cfg.guidance.kd.tau) == (0.0, 64, 0.0, 0.0, 4.0)
    states = []
    for overrides in ({}, {"guidance.drloc.m": 8, "guidance.kd.tau": 2.0}):
        torch.manual_seed(0)
        task = task_with(overrides, targets=None)
        assert not len(task.terms) and type(task.student).__name__ == "VisionTransformer"
        task(batch())
        states.append(torch.get_rng_state())
    assert torch.equal(*states)


def test_the_sweep_preset_searches_over_terms():
    from raylg.ray import spec

    sweep = spec.load("jobs/configs/sweeps/digits-terms.yaml")
    assert {k: v["grid"] for k, v in sweep.spec.space.items()} == {
        "guidance.locality.beta": [0.0, 2.5], "guidance.drloc.weight": [0.0, 0.5],
        "guidance.kd.weight": [0.0, 1.0], "guidance.distill_token.weight": [0.0, 1.0]}


# -- composition, end to end ------------------------------------------------------------------


def test_composed_terms_each_have_their_own_loss_and_stats():
    task = task_with({**ALL_ON, "guidance.locality.beta": 2.5})
    out = task(batch())
    assert set(out["losses"]) == {"ce", "lg", "drloc", "dist", "kd"}
    assert {"lg_mse", "drloc_l1", "dist_ce", "dist_teacher_top1", "kd_kl"} <= set(out["stats"])
    s, l = out["stats"], out["losses"]
    assert torch.allclose(l["drloc"], 0.5 * s["drloc_l1"]) and torch.allclose(l["dist"], s["dist_ce"])
    assert torch.allclose(l["kd"], s["kd_kl"]) and torch.allclose(l["lg"], 2.5 * s["lg_mse"])


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_with_every_term_on_trains_end_to_end(tmp_path, digits_teacher):
    cfg = tiny_config(tmp_path, **{"teacher.path": str(digits_teacher), **ALL_ON})
    summary = fit(cfg, tmp_path / "all")
    got = rows(tmp_path / "all")
    for r in got:  # every term is logged, weighted, beside its stats; the total is their sum
        terms = [r[f"train/{k}"] for k in ("ce", "lg", "drloc", "dist", "kd")]
        assert all(v > 0 for v in terms)
        assert r["train/loss"] == pytest.approx(sum(terms), rel=1e-6)
        for stat in ("lg_mse", "drloc_l1", "dist_ce", "dist_teacher_top1", "kd_kl"):
            assert f"train/{stat}" in r
    assert 0 <= summary["best"]["val/top1"] <= 100
    saved = checkpoint.load_file(str(tmp_path / "all" / "checkpoints" / "last" / checkpoint.MODEL_FILE))
    assert any(k.startswith("terms.drloc.head.") for k in saved) and "student.head_dist.weight" in saved
    exported = checkpoint.load_file(str(tmp_path / "all" / "student.safetensors"))
    assert "head_dist.weight" in exported and not any(k.startswith("terms.") for k in exported)


def test_resume_with_drloc_and_distillation_is_exact(tmp_path, digits_teacher):
    from raylg.config import apply_overrides

    cfg = tiny_config(tmp_path, **{"teacher.path": str(digits_teacher), "guidance.drloc.weight": 0.5,
                                   "guidance.distill_token.weight": 1.0, "run.max_train_batches": 2})
    fit(cfg, tmp_path / "straight")
    with pytest.raises(Crash):
        fit(cfg, tmp_path / "broken", hooks=CrashAfter(1))
    fit(apply_overrides(cfg, {"run.resume": True}), tmp_path / "broken")
    a, b = rows(tmp_path / "straight"), rows(tmp_path / "broken")
    assert [r["train/drloc"] for r in a] == [r["train/drloc"] for r in b]  # the same pairs drawn after resume
    assert [r["val/top1"] for r in a] == [r["val/top1"] for r in b]


def test_train_job_reports_an_unsupported_term_before_training(tmp_path, digits_teacher, capsys):
    import train

    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path), "--name", "bad", "--set", "run.progress=false", "--set", "model.name=pvt_v2_micro",
                    "--set", f"teacher.path={digits_teacher}", "--set", "guidance.distill_token.weight=1"])
    assert e.value.code == 2
    assert "student 'pvt_v2_micro' cannot carry a distillation token" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_sweep_refuses_a_term_and_student_that_clash_only_together(tmp_path, capsys):
    """Each value alone is fine (DeiT with the token; PVT without it); the sweep job checks every
    combination of the space on the meta device and refuses the pair before Ray starts."""
    import sweep

    space = {"model.name": {"grid": ["deit_micro_patch4_32", "pvt_v2_micro"]},
             "guidance.distill_token.weight": {"grid": [0.0, 1.0]}}
    spec_file = tmp_path / "clash.yaml"
    spec_file.write_text(json.dumps({"name": "clash", "run_config": str(ROOT / "jobs/configs/digits-tiny.yaml"),
                                     "space": space, "storage": str(tmp_path / "store")}))
    with pytest.raises(SystemExit) as e:
        sweep.main(["--config", str(spec_file)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "space point {'model.name': 'pvt_v2_micro', 'guidance.distill_token.weight': 1.0}" in err
    assert "cannot carry a distillation token" in err
    assert not (tmp_path / "store").exists()  # nothing started, nothing written


def test_sweep_with_a_teacher_checks_each_students_layer_map(tmp_path):
    from raylg.preflight import preflight
    from raylg.ray import spec

    spec_file = tmp_path / "blocks.yaml"
    spec_file.write_text(json.dumps({
        "name": "blocks", "run_config": str(ROOT / "jobs/configs/digits-tiny.yaml"),
        "teacher": {"config": str(ROOT / "jobs/configs/teacher-digits-tiny.yaml")},
        "set": {"model.name": "t2t_vit_7", "guidance.locality.student_blocks": [0, 2, 3]},  # within 4 and 7 blocks
        "space": {"model.name": {"grid": ["t2t_vit_7", "deit_micro_patch4_32"]}}}))
    spec.load(spec_file, check=preflight)
    spec_file.write_text(spec_file.read_text().replace("[0, 2, 3]", "[0, 3, 6]"))
    with pytest.raises(ConfigError, match=r"space.model.name \(grid value 'deit_micro_patch4_32'\).*student_blocks \[0, 3, 6\]"):
        spec.load(spec_file, check=preflight)
