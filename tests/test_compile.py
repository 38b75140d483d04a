"""run.compile: the task's forward through torch.compile on the CPU, compiled before the first epoch
with its time reported apart; the warm-up leaves no trace in the run; a sweep may search it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import TINY, tiny_config
from raylg import compiled
from raylg.fit import fit, setup
from raylg.ray import spec as spec_lib


def test_a_sweep_can_search_over_compile(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "run_config": str(TINY), "space": {"run.compile": {"grid": [False, True]}}}))
    sweep = spec_lib.load(path)
    assert [sweep.trial_config({"run.compile": v}).run.compile for v in (False, True)] == [False, True]


@pytest.mark.slow
def test_warm_up_compiles_and_leaves_the_task_and_rng_as_they_were(tmp_path):
    cfg = tiny_config(tmp_path)
    s = setup(cfg)
    task = s.task
    before = {k: v.clone() for k, v in task.state_dict().items()}
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    loader = torch.utils.data.DataLoader(s.bundle.train, batch_size=16)
    seconds = compiled.warm_up(compiled.compile_task(task), loader, torch.device("cpu"), "fp32")
    assert seconds > 0
    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())  # same keys, same values
    assert all(p.grad is None for p in task.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.slow
def test_compiled_run_trains_like_eager_and_reports_compile_time_apart(tmp_path):
    over = {"schedule.epochs": 1, "schedule.warmup_epochs": 0, "run.max_train_batches": 3}
    eager = fit(tiny_config(tmp_path, **over), tmp_path / "eager")
    comp = fit(tiny_config(tmp_path, **over, **{"run.compile": True}), tmp_path / "compiled")
    rows = {k: json.loads((tmp_path / k / "metrics.jsonl").read_text().splitlines()[0]) for k in ("eager", "compiled")}
    assert rows["compiled"]["compile_time_s"] > 0 and comp["compile_time_s"] == rows["compiled"]["compile_time_s"]
    assert "compile_time_s" not in rows["eager"] and "compile_time_s" not in eager
    # the same batches and randomness (the warm-up put them back); kernels differ only in rounding
    assert rows["compiled"]["train/ce"] == pytest.approx(rows["eager"]["train/ce"], rel=0.02)
    assert rows["compiled"]["val/top1"] == pytest.approx(rows["eager"]["val/top1"], abs=2.0)
    # the compiled run's checkpoint holds the eager key names (the task was compiled in place)
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "compiled" / "student.safetensors")).keys() == \
        load_file(str(tmp_path / "eager" / "student.safetensors")).keys()
