"""Sweeps on a real Ray cluster (one `ray start --head` per test session, token auth on) with a
real MLflow store: ASHA, DDP, worker failure, a killed driver, `ray job submit`, bad input."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle as cloudpickle
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, TINY, mlflow_runs, tiny_config
from raylg import config as config_lib
from raylg.config import ConfigError
from raylg.ray import spec as spec_lib, sweep as sweep_lib
from raylg.ray.trainer import RayHooks, make_trainer, train_loop
from raylg.tracking import TrackingError, default_uri

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # FailOnce travels to Ray workers by value

pytestmark = pytest.mark.slow

FAST = {"schedule.epochs": 2, "schedule.warmup_epochs": 1, "schedule.min_lr": 0.0, "schedule.warmup_lr": 0.0,
        "run.max_train_batches": 10, "data.eval_batch_size": 512, "model.name": "pvt_v2_micro"}


def write_sweep(tmp_path: Path, teacher_path: Path, name: str, space: dict, **extra) -> Path:
    spec = {"name": name, "run_config": str(TINY), "set": dict(FAST), "space": space, "teacher": {"path": str(teacher_path)},
            "max_concurrent": 1, "asha": {"grace_period": 1, "reduction_factor": 2},
            "resources": {"workers": 0, "cpus_per_worker": 1}, "storage": str(tmp_path / "store")}
    for k, v in extra.items():
        spec[k] = {**spec[k], **v} if isinstance(v, dict) and isinstance(spec.get(k), dict) else v
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def asha_sweep(ray_head, digits_teacher, tmp_path_factory):
    """4 trials run one at a time; the last two cannot learn (lr 1e-8), so at the first rung
    ASHA sees them below the median of the two that learn, and stops them."""
    tmp = tmp_path_factory.mktemp("asha")
    path = write_sweep(tmp, digits_teacher, "asha", {"optim.lr": {"grid": [3e-3, 2e-3, 1e-8, 1e-8]}})
    rows = sweep_lib.run(spec_lib.load(path))
    return tmp, path, rows


def test_asha_sweep_with_parent_and_child_runs(asha_sweep):
    tmp, _, rows = asha_sweep
    assert len(rows) == 4 and all(r["status"] == "FINISHED" for r in rows)
    stopped = [r for r in rows if r["stopped_early"]]
    assert stopped and all(r["epochs"] == 1 for r in stopped)
    assert all(r["epochs"] == 2 for r in rows if not r["stopped_early"])
    client, parents, children = mlflow_runs(tmp / "store", "asha")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.txt", "summary.csv", "val_top1_vs_beta.png"}
    for child in children:
        assert child.info.status == "FINISHED"  # never left RUNNING
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["optim.lr"] in ("0.003", "0.002", "1e-08") and child.data.params["model.name"] == "pvt_v2_micro"
        assert child.data.tags["student"] == "pvt_v2_micro" and child.data.tags["dataset"] == "digits"
        history = client.get_metric_history(child.info.run_id, "val/top1")
        early = child.data.tags["raylg.stopped_early"] == "true"
        assert [m.step for m in history] == ([0] if early else [0, 1])
        for key in ("train/ce", "train/lg", "train/lg_mse", "val/top5", "lr", "images_per_s"):
            assert key in child.data.metrics
        arts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "student.safetensors", "curves.png"} <= arts
    assert sum(c.data.tags["raylg.stopped_early"] == "true" for c in children) == len(stopped)


def test_reused_name_with_another_space_is_refused(asha_sweep, digits_teacher):
    tmp, _, _ = asha_sweep
    other = write_sweep(tmp, digits_teacher, "asha", {"optim.lr": {"grid": [1e-3]}})
    with pytest.raises(sweep_lib.SweepError, match=r"already used .*space: was"):
        sweep_lib.run(spec_lib.load(other))


def test_trial_with_two_ddp_workers(ray_head, digits_teacher, tmp_path):
    path = write_sweep(tmp_path, digits_teacher, "ddp", {"guidance.locality.beta": {"grid": [2.5]}},
                       resources={"workers": 2, "cpus_per_worker": 1},
                       set={**FAST, "schedule.epochs": 1, "schedule.warmup_epochs": 0})
    rows = sweep_lib.run(spec_lib.load(path))
    assert [r["status"] for r in rows] == ["FINISHED"] and rows[0]["epochs"] == 1
    client, _, children = mlflow_runs(tmp_path / "store", "ddp")
    (child,) = children
    assert child.data.metrics["world_size"] == 2 and child.data.metrics["train/lg"] > 0


def test_sweep_with_its_storage_on_s3(ray_head, digits_teacher, s3_env, tmp_path, monkeypatch):
    """storage: s3://... — trials checkpoint to the bucket (moto) through Ray's pyarrow S3
    filesystem; this machine keeps only the MLflow store, under ~/.cache/raylg/sweeps/NAME."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env)
    s3.create_bucket(Bucket="sweeps")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_sweep(tmp_path, digits_teacher, "ons3", {"guidance.locality.beta": {"grid": [0.0, 2.5]}},
                       storage="s3://sweeps/raylg", set={**FAST, "schedule.epochs": 1, "schedule.warmup_epochs": 0},
                       teacher={"path": "", "config": str(ROOT / "jobs/configs/teacher-digits-tiny.yaml"),
                                "set": {"schedule.epochs": 1, "run.max_train_batches": 3}})
    rows = sweep_lib.run(spec_lib.load(path))
    assert sorted(r["status"] for r in rows) == ["FINISHED", "FINISHED"]
    published = [o["Key"] for o in s3.list_objects_v2(Bucket="sweeps", Prefix="raylg/_teachers/").get("Contents", [])]
    (key,) = {k.split("/")[2] for k in published}  # the sweep's teacher, trained once and published to the bucket
    assert sorted(k.split("/")[3] for k in published) == ["teacher.json", "teacher.safetensors"]
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="sweeps", Prefix="raylg/ons3/")
            for o in page.get("Contents", [])]
    trials = {k.split("/")[2] for k in keys if k.split("/")[2].startswith("trial_")}
    assert len(trials) == 2, keys
    for trial in trials:  # each trial's checkpoint is in the bucket
        assert any(k.startswith(f"raylg/ons3/{trial}/checkpoint_") for k in keys), (trial, keys)
    assert not (tmp_path / "store").exists()
    local = tmp_path / "home" / ".cache" / "raylg" / "sweeps" / "ons3"
    assert (local / sweep_lib.SWEEP_FILE).is_file()
    client = MlflowClient(default_uri(local))
    children = [r for r in client.search_runs([client.get_experiment_by_name("ons3").experiment_id])
                if r.data.tags.get("raylg.role") == "trial"]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    guided = {c.data.params["guidance.locality.beta"]: c for c in children}
    assert guided["2.5"].data.params["teacher.path"] == f"s3://sweeps/raylg/_teachers/{key}/teacher.safetensors"
    assert guided["2.5"].data.metrics["train/lg"] > 0  # the trial fetched it from the bucket and trained with it
    assert guided["0.0"].data.params["teacher.path"] == ""


def test_ddp_run_evaluates_the_test_split_on_rank_0(ray_head, tmp_path):
    """Two DDP workers on Fashion-MNIST (which has a test split): training all-reduces, then
    rank 0 alone evaluates the best checkpoint on all 10,000 test images and writes the summary."""
    cfg = tiny_config(tmp_path, **{"data.name": "fashion_mnist", "data.per_class": 10, "data.val_fraction": 0.01,
                                   "schedule.epochs": 1, "schedule.warmup_epochs": 0, "run.max_train_batches": 2})
    trainer = make_trainer({"cfg": config_lib.flatten(cfg), "run_dir": str(tmp_path / "run"), "tracking": None},
                           name="ddp-test-split", storage=str(tmp_path / "store"), workers=2, cpus_per_worker=1,
                           gpus_per_worker=0, failures=0)
    result = trainer.fit()
    assert result.error is None and result.metrics["world_size"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 <= summary["test/top1"] <= 100 and summary["test/loss"] > 0
    assert (tmp_path / "run" / "student.safetensors").is_file()


class FailOnce(RayHooks):
    """Raises in the second epoch's report, once (a marker file remembers)."""

    marker: str = ""

    def report(self, metrics, checkpoint_dir):
        if metrics["epoch"] == 1 and not Path(self.marker).exists():
            Path(self.marker).write_text("failed once")
            raise RuntimeError("injected worker failure at epoch 2")
        super().report(metrics, checkpoint_dir)


def test_worker_failure_resumes_from_its_checkpoint(ray_head, tmp_path):
    marker = tmp_path / "failed"
    hooks = type("FailOnceHere", (FailOnce,), {"marker": str(marker)})
    cfg = tiny_config(tmp_path, **{"schedule.epochs": 3, "run.max_train_batches": 3})
    trainer = make_trainer({"cfg": config_lib.flatten(cfg), "run_dir": str(tmp_path / "run"), "tracking": None},
                           name="fail-once", storage=str(tmp_path / "store"), workers=1, cpus_per_worker=1,
                           gpus_per_worker=0, failures=2, loop=functools.partial(train_loop, hooks_cls=hooks))
    result = trainer.fit()
    assert marker.exists() and result.error is None
    assert result.metrics["epochs_done"] == 3
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]  # epoch 2 was redone from the epoch-1 checkpoint, logged once


def _tune_results(store: Path, name: str) -> dict[str, list[dict]]:
    out = {}
    for f in (store / name).glob("trial_*/result.json"):
        lines = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        if lines:
            out[lines[0]["trial_id"]] = lines
    return out


def test_killed_driver_resumes_without_rerunning_or_duplicating(ray_head, digits_teacher, tmp_path):
    path = write_sweep(tmp_path, digits_teacher, "killed", {"optim.lr": {"grid": [3e-3, 2e-3, 1e-3]}},
                       asha={"grace_period": 2})
    cmd = [sys.executable, str(ROOT / "jobs" / "sweep.py"), "--config", str(path)]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline:  # kill once one trial is complete and the next has reported
        res = _tune_results(tmp_path / "store", "killed")
        done = [t for t, lines in res.items() if lines[-1].get("epochs_done") == 2]
        if done and len(res) >= 2:
            break
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(1)
    else:
        pytest.fail("the sweep did not get going in time")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _tune_results(tmp_path / "store", "killed")
    finished = {t for t, lines in before.items() if lines[-1].get("epochs_done") == 2}
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout
    after = _tune_results(tmp_path / "store", "killed")
    for t in finished:  # finished trials were not run again
        assert len(after[t]) == len(before[t]) == 2
    client, parents, children = mlflow_runs(tmp_path / "store", "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["raylg.trial_id"] for c in children) == sorted(after)  # one run per trial
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        if c.data.tags["raylg.trial_id"] in finished:
            assert [m.step for m in client.get_metric_history(c.info.run_id, "val/top1")] == [0, 1]


def test_ray_job_submit_runs_a_sweep(ray_head, digits_teacher, tmp_path):
    path = write_sweep(tmp_path, digits_teacher, "submitted", {"guidance.locality.beta": {"grid": [0.0]}},
                       set={**FAST, "schedule.epochs": 1, "schedule.warmup_epochs": 0})
    env = {**ray_head.env}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(["ray", "job", "submit", "--address", ray_head.dashboard, "--working-dir", str(ROOT), "--",
                          "python", "jobs/sweep.py", "--config", str(path)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "best val top-1" in out.stdout and "succeeded" in out.stdout
    _, parents, children = mlflow_runs(tmp_path / "store", "submitted")
    assert len(parents) == 1 and len(children) == 1 and children[0].info.status == "FINISHED"
    # without the token the jobs API refuses
    env.pop("RAY_AUTH_TOKEN")
    env.pop("RAY_AUTH_MODE")
    denied = subprocess.run(["ray", "job", "list", "--address", ray_head.dashboard], env={**env, "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0


# --- bad input: every case fails before any trial starts ---------------------------------


@pytest.mark.parametrize("space, extra, message", [
    ({"optim.lrr": {"grid": [1e-3]}}, {}, "unknown config key 'optim.lrr'; did you mean optim.lr"),
    ({"model.name": {"choice": []}}, {}, "expected a non-empty list"),
    ({"guidance.locality.beta": {"grid": [-1.0, 2.5]}}, {}, "guidance.locality.beta: -1.0 is out of range"),
    ({"guidance.locality.beta": {"uniform": [-0.5, 2.0]}}, {}, "beta: -0.5 is out of range"),
    ({"optim.lr": {"sometimes": [1]}}, {}, "expected one of"),
    ({}, {"metric": "train/loss"}, "not a metric the trainer reports"),
])
def test_bad_specs_are_refused_at_load(tmp_path, space, extra, message):
    path = write_sweep(tmp_path, tmp_path / "t.safetensors", "bad", space, **extra)
    with pytest.raises(ConfigError) as e:
        spec_lib.load(path)
    assert message in str(e.value)


def test_bad_runtime_inputs_are_refused_before_trials(ray_head, digits_teacher, tmp_path):
    space = {"guidance.locality.beta": {"grid": [0.0]}}
    gpus = write_sweep(tmp_path, digits_teacher, "gpus", space, resources={"workers": 1, "gpus_per_worker": 1})
    with pytest.raises(sweep_lib.SweepError, match=r"= 1 GPUs but the Ray cluster has 0 GPUs"):
        sweep_lib.run(spec_lib.load(gpus))
    unreachable = write_sweep(tmp_path, digits_teacher, "nomlflow", space,
                              mlflow_uri=f"http://127.0.0.1:{__import__('conftest').free_port()}")
    with pytest.raises(TrackingError, match="unreachable"):
        sweep_lib.run(spec_lib.load(unreachable))
    missing = write_sweep(tmp_path, tmp_path / "nope.safetensors", "noteacher", space)
    with pytest.raises(Exception, match="not found"):
        sweep_lib.run(spec_lib.load(missing))
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(digits_teacher.read_bytes()[:-8] + b"\0" * 8)
    bad.with_suffix(".json").write_text(digits_teacher.with_suffix(".json").read_text())
    tampered = write_sweep(tmp_path, bad, "tampered", space)
    with pytest.raises(Exception, match="corrupt or was replaced"):
        sweep_lib.run(spec_lib.load(tampered))
    for name in ("gpus", "nomlflow", "noteacher", "tampered"):
        assert not list((tmp_path / "store" / name).glob("trial_*"))  # no trial ever started
