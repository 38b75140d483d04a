import math

import pytest

from raylg import config as C, schedule


def test_defaults_follow_the_paper_recipe():
    cfg = C.Config()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas) == (5e-4, 0.05, [0.9, 0.999])
    assert (cfg.schedule.epochs, cfg.schedule.warmup_epochs, cfg.schedule.warmup_lr, cfg.schedule.min_lr) == (300, 20, 5e-7, 5e-6)
    assert cfg.data.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.data.re_prob == 0.25 and cfg.data.scale_min == 0.08
    assert cfg.guidance.locality.beta == 2.5 and cfg.teacher.bn_mode == "train" and cfg.run.seed == 1


def test_flatten_unflatten_round_trip():
    cfg = C.load(None, {"optim.lr": 1e-3, "model.kwargs": {"depth": 4}, "guidance.locality.student_blocks": [0, 1, 3]})
    flat = C.flatten(cfg)
    assert flat["optim.lr"] == 1e-3 and flat["model.kwargs"] == {"depth": 4}
    assert C.unflatten(flat) == cfg
    flat["model.kwargs"]["depth"] = 9  # flatten copies mutable leaves
    assert cfg.model.kwargs == {"depth": 4}


def test_yaml_round_trip_and_base_include(tmp_path):
    cfg = C.load(None, {"data.name": "fashion_mnist", "schedule.epochs": 7, "schedule.warmup_epochs": 1})
    C.save(cfg, tmp_path / "a.yaml")
    assert C.load(tmp_path / "a.yaml") == cfg
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim:\n  lr: 2e-4\n")  # PyYAML reads 2e-4 as a string
    b = C.load(tmp_path / "b.yaml")
    assert b.optim.lr == 2e-4 and b.schedule.epochs == 7 and b.data.name == "fashion_mnist"
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(C.ConfigError, match="includes itself"):
        C.load(tmp_path / "c.yaml")


def test_overrides_parse_yaml_values():
    over = C.parse_set(["optim.lr=1e-3", "data.per_class=50", "model.kwargs.depth=4", "optim.betas=[0.9, 0.95]",
                        "run.resume=true"])
    cfg = C.load(None, over)
    assert cfg.optim.lr == 1e-3 and cfg.data.per_class == 50 and cfg.model.kwargs == {"depth": 4}
    assert cfg.optim.betas == [0.9, 0.95] and cfg.run.resume is True
    with pytest.raises(C.ConfigError, match="KEY=VALUE"):
        C.parse_set(["optim.lr"])


@pytest.mark.parametrize("over, message", [
    ({"optim.lrr": 1}, "unknown config key 'optim.lrr'; did you mean optim.lr"),
    ({"optm.lr": 1}, "did you mean optim"),
    ({"optim.lr": "fast"}, "optim.lr: expected a number, got 'fast'"),
    ({"schedule.epochs": 2.5}, "schedule.epochs: expected an integer"),
    ({"run.resume": "yes"}, "run.resume: expected true or false"),
    ({"run.precision": "fp16"}, "run.precision: 'fp16' is not one of 'fp32', 'bf16'"),
    ({"optim.lr": -1.0}, "optim.lr: -1.0 is out of range"),
    ({"guidance.locality.beta": -0.5}, "guidance.locality.beta: -0.5 is out of range"),
    ({"guidance.locality.beta": float("nan")}, "guidance.locality.beta"),
    ({"data.per_class": -3}, "data.per_class"),
    ({"schedule.warmup_epochs": 400}, "schedule.warmup_epochs"),
    ({"optim": 3}, "optim is a section"),
    ({"guidance.locality.student_blocks": [0, 1]}, "one block per teacher stage"),
    ({"teacher.path": "t.safetensors", "teacher.img_size": 64, "data.img_size": 32}, "teacher.img_size: 64"),
])
def test_validation_errors_name_the_field(over, message):
    with pytest.raises(C.ConfigError) as e:
        C.load(None, over)
    assert message in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: [\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.load(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("data:\n  nmae: digits\n")
    with pytest.raises(C.ConfigError, match=r"typo.yaml: unknown config key 'data.nmae'; did you mean data.name"):
        C.load(tmp_path / "typo.yaml")


def test_diff_names_fields():
    a, b = C.Config(), C.load(None, {"optim.lr": 1e-3, "run.resume": True})
    assert C.diff(a, b) == {"optim.lr": (5e-4, 1e-3), "run.resume": (False, True)}
    assert C.diff(a, b, ignore=("run.resume",)) == {"optim.lr": (5e-4, 1e-3)}


def test_schedule_values():
    kw = dict(total_steps=1000, warmup_steps=100, base_lr=5e-4, warmup_lr=5e-7, min_lr=5e-6)
    assert schedule.lr_at(0, **kw) == pytest.approx(5e-7)
    assert schedule.lr_at(50, **kw) == pytest.approx(5e-7 + (5e-4 - 5e-7) / 2)
    assert schedule.lr_at(100, **kw) == pytest.approx(5e-4)  # warmup end = peak
    assert schedule.lr_at(550, **kw) == pytest.approx(5e-6 + (5e-4 - 5e-6) / 2)  # cosine midpoint
    assert schedule.lr_at(999, **kw) == pytest.approx(5e-6, abs=2e-9)  # end approaches the floor
    assert schedule.lr_at(1000, **kw) == pytest.approx(5e-6)
    lrs = [schedule.lr_at(s, **kw) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone after warmup
    bound = schedule.for_config(C.ScheduleConfig(epochs=10, warmup_epochs=2), 1e-3, steps_per_epoch=10)
    assert bound(20) == pytest.approx(1e-3) and math.isclose(bound(0), 5e-7)
