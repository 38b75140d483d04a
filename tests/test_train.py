"""The plain-PyTorch training run: accuracy on real digits, exact resume, atomic checkpoints."""

import json

import pytest
import torch

from conftest import Crash, CrashAfter, tiny_config
from raylg import checkpoint
from raylg.fit import ResumeError, fit


def rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_run_on_digits_is_clearly_above_chance(tmp_path):
    # 10 classes: chance is 10% and the carved val split has 179 images, so guessing scores
    # above 30% with probability < 1e-8 (binomial tail); the preset reaches about 70% in 12 epochs.
    cfg = tiny_config(tmp_path, **{"schedule.epochs": 6, "run.max_train_batches": 0})
    summary = fit(cfg, tmp_path / "run")
    assert summary["best"]["val/top1"] > 30.0
    r = rows(tmp_path / "run")
    assert [x["epoch"] for x in r] == list(range(6))
    assert r[-1]["train/ce"] < r[0]["train/ce"]
    for key in ("train/ce", "train/loss", "val/top1", "val/top5", "lr", "images_per_s"):
        assert key in r[0]
    assert (tmp_path / "run" / "student.safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").read_text().startswith("data:")
    assert json.loads((tmp_path / "run" / "data.json").read_text())["splits"]["val_carved"] is True


def test_resume_continues_exactly(tmp_path):
    cfg = tiny_config(tmp_path, **{"schedule.epochs": 3, "run.max_train_batches": 3})
    fit(cfg, tmp_path / "straight")
    with pytest.raises(Crash):
        fit(cfg, tmp_path / "broken", hooks=CrashAfter(1))
    assert [x["epoch"] for x in rows(tmp_path / "broken")] == [0]
    fit(config_lib_set(cfg, "run.resume", True), tmp_path / "broken")
    a, b = rows(tmp_path / "straight"), rows(tmp_path / "broken")
    assert [x["epoch"] for x in b] == [0, 1, 2]
    for x, y in zip(a, b):  # the same losses and accuracies, not just close
        assert x["train/loss"] == y["train/loss"] and x["val/top1"] == y["val/top1"] and x["lr"] == y["lr"]
    wa = checkpoint.load_file(str(tmp_path / "straight" / "checkpoints" / "last" / checkpoint.MODEL_FILE))
    wb = checkpoint.load_file(str(tmp_path / "broken" / "checkpoints" / "last" / checkpoint.MODEL_FILE))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def config_lib_set(cfg, key, value):
    from raylg import config

    return config.apply_overrides(cfg, {key: value})


def test_resume_errors_name_the_problem(tmp_path):
    cfg = tiny_config(tmp_path, **{"run.resume": True})
    with pytest.raises(ResumeError, match="holds no checkpoint"):
        fit(cfg, tmp_path / "empty")
    with pytest.raises(Crash):
        fit(tiny_config(tmp_path), tmp_path / "r", hooks=CrashAfter(1))
    other = tiny_config(tmp_path, **{"run.resume": True, "optim.lr": 1e-4, "data.per_class": 20})
    with pytest.raises(ResumeError) as e:
        fit(other, tmp_path / "r")
    assert "optim.lr: checkpoint 0.002 vs now 0.0001" in str(e.value) and "data.per_class" in str(e.value)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    module = torch.nn.Linear(3, 2)
    cfg = tiny_config(tmp_path)
    checkpoint.save(tmp_path / "last", module=module, optimizer=None, cfg=cfg, epoch=0, step=5)
    before = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.add_(1.0)

    def dies(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.config_lib, "save", dies)  # fails after the weights were written
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "last", module=module, optimizer=None, cfg=cfg, epoch=1, step=10)
    fresh = torch.nn.Linear(3, 2)
    meta = checkpoint.load(tmp_path / "last", module=fresh)
    assert meta["epoch"] == 0 and torch.equal(fresh.weight, before)
    # a swap cut between its two renames leaves NAME.old, which is still found
    (tmp_path / "last").rename(tmp_path / "last.old")
    assert checkpoint.find(tmp_path / "last") == tmp_path / "last.old"


def test_checkpoint_never_unpickles(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / checkpoint.MODEL_FILE).write_bytes(b"\x80\x04not a safetensors file")
    (tmp_path / "c" / checkpoint.STATE_FILE).write_text("{}")
    (tmp_path / "c" / checkpoint.OPTIM_FILE).write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path / "c", module=torch.nn.Linear(1, 1))
