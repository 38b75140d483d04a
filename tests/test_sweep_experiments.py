"""Experiments as sweeps, on the session's Ray head with a real MLflow store: arms x seeds x a
data axis, a teacher per data setting (trained once as Ray tasks, published, reused by the next
sweep), the verdict recomputed here from the trials' own MLflow metrics, a diverging arm that
makes jobs/sweep.py exit non-zero naming the trial, and the bad inputs refused at load."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, mlflow_runs
from raylg.config import ConfigError
from raylg.ray import spec as spec_lib, sweep as sweep_lib, teachers as teachers_lib

TEACHER = ROOT / "jobs" / "configs" / "teacher-digits-tiny.yaml"
FAST = {"schedule.epochs": 1, "schedule.warmup_epochs": 0, "schedule.min_lr": 0.0, "schedule.warmup_lr": 0.0,
        "run.max_train_batches": 3, "data.eval_batch_size": 512, "model.name": "pvt_v2_micro"}


def write(tmp: Path, name: str, **fields) -> Path:
    spec = {"name": name, "run_config": str(TINY), "set": dict(FAST),
            "arms": {"baseline": {"guidance.locality.beta": 0.0}, "lg": {}}, "seeds": [1, 2], "seed_fields": ["run.seed"],
            "space": {"data.per_class": {"grid": [20, 40]}},
            "teacher": {"config": str(TEACHER), "set": {"schedule.epochs": 1, "run.max_train_batches": 3}},
            "asha": "off", "max_concurrent": 2, "resources": {"workers": 0, "cpus_per_worker": 1},
            "storage": str(tmp / "store")}
    spec.update(fields)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def teacher_cards(store: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / teachers_lib.CARD).read_text()) for d in (store / teachers_lib.DIR).iterdir()
            if d.is_dir() and not d.name.startswith(".")}


@pytest.fixture(scope="module")
def experiment(ray_head, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiment")
    rows = sweep_lib.run(spec_lib.load(write(tmp, "exp")))
    return tmp, rows


pytestmark = pytest.mark.slow


def test_a_teacher_per_data_setting_and_each_trial_gets_its_own(experiment):
    tmp, rows = experiment
    assert len(rows) == 8 and all(r["status"] == "FINISHED" and not r["stopped_early"] for r in rows)
    assert sorted((r["arm"], r["seed"], r["data.per_class"]) for r in rows) == sorted(
        (a, s, n) for a in ("baseline", "lg") for s in (1, 2) for n in (20, 40))
    cards = teacher_cards(tmp / "store")
    by_size = {c["fingerprint"]["per_class"]: key for key, c in cards.items()}
    assert sorted(by_size) == [20, 40] and len(cards) == 2  # one per per_class, not per trial
    for key, card in cards.items():
        assert card["fingerprint"]["name"] == "digits" and card["fingerprint"]["count"] > 0
        assert teachers_lib.fetch(str(tmp / "store" / teachers_lib.DIR / key))  # hash-checked against its card
    client, (parent,), kids = mlflow_runs(tmp / "store", "exp")
    assert len(kids) == 8 and all(k.info.status == "FINISHED" for k in kids)
    for k in kids:
        tags, params = k.data.tags, k.data.params
        assert tags["arm"] in ("baseline", "lg") and tags["seed"] in ("1", "2")
        assert tags["data.per_class"] == params["data.per_class"]
        if tags["arm"] == "baseline":  # beta 0 and no teacher term: a plain run, no teacher loaded
            assert params["teacher.path"] == "" and "train/lg" not in k.data.metrics
        else:
            key = by_size[int(params["data.per_class"])]
            assert Path(params["teacher.path"]) == tmp / "store" / teachers_lib.DIR / key / teachers_lib.WEIGHTS
            assert k.data.metrics["train/lg"] > 0
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"verdict.md", "verdict.csv", "verdict.json", "verdict.png", "verdict.txt", "summary.csv"} <= arts


def test_the_verdict_is_the_trials_own_numbers(experiment):
    tmp, _ = experiment
    client, _, kids = mlflow_runs(tmp / "store", "exp")
    best = {}
    for k in kids:  # from MLflow's own metric history, not from the sweep's rows
        hist = client.get_metric_history(k.info.run_id, "val/top1")
        best[(k.data.tags["arm"], int(k.data.tags["data.per_class"]), int(k.data.tags["seed"]))] = max(m.value for m in hist)
    saved = json.loads((tmp / "store" / "exp" / "verdict.json").read_text())
    assert saved["baseline_arm"] == "baseline" and saved["fields"] == ["data.per_class"]
    got = {(v["arm"], v["data.per_class"]): v for v in saved["verdict"]}
    assert len(got) == 4
    for (arm, n), v in got.items():
        vals = [best[(arm, n, s)] for s in (1, 2)]
        assert v["n"] == 2 and v["stopped_early"] == 0 and v["failed"] == 0
        assert math.isclose(v["val_mean"], statistics.mean(vals)) and math.isclose(v["val_std"], statistics.stdev(vals))
        if arm == "lg":
            deltas = [best[("lg", n, s)] - best[("baseline", n, s)] for s in (1, 2)]
            assert v["delta_on"] == "best_val_top1" and v["delta_n"] == 2  # digits has no test split
            assert math.isclose(v["delta_mean"], statistics.mean(deltas))
            assert math.isclose(v["delta_min"], min(deltas)) and math.isclose(v["delta_max"], max(deltas))
        else:
            assert v["delta_n"] == 0
    md = (tmp / "store" / "exp" / "verdict.md").read_text()
    assert md.startswith("| arm | data.per_class | n | best val top-1 |") and md.count("\n| lg |") == 2


def test_next_sweep_reuses_the_teachers_and_a_diverging_arm_fails_the_job(experiment, ray_head):
    tmp, _ = experiment
    before = {k: (tmp / "store" / teachers_lib.DIR / k / teachers_lib.WEIGHTS).stat().st_mtime_ns
              for k in teacher_cards(tmp / "store")}
    path = write(tmp, "diverge", arms={"lg": {}, "diverge": {"optim.lr": 1e12}}, seeds=[1], baseline_arm="lg")
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "sweep.py"), "--config", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("reusing") == 2 and "training resnet20" not in out.stdout
    after = {k: (tmp / "store" / teachers_lib.DIR / k / teachers_lib.WEIGHTS).stat().st_mtime_ns
             for k in teacher_cards(tmp / "store")}
    assert after == before  # nothing retrained, nothing added
    failed = [l for l in out.stdout.splitlines() if " FAILED (arm diverge" in l]
    assert len(failed) == 2 and all("non-finite loss" in l for l in failed), out.stdout[-3000:]
    assert "error: 2 of 4 trials failed" in out.stderr
    console = out.stdout + out.stderr  # one line per event; Ray's and Tune's routine logging goes to driver.log
    for noise in ("Checkpoint successfully created", "snapshotting", "Running in local mode", "repeated", "TensorBoard"):
        assert noise not in console, noise
    assert console.startswith("sweep diverge: starting 4 trials (2 arms x 1 seed x 2 data.per_class); storage "), console[:300]
    assert "INFO mlflow" not in console  # MLflow's store set-up logging goes to driver.log too
    assert console.count("): started") == 4 and console.count(" epoch 1/1: val top-1 ") == 2
    assert console.count("): failed: ") == 2 and console.count("): finished") == 2
    assert (tmp / "store" / "diverge" / "driver.log").stat().st_size > 0
    _, (parent,), kids = mlflow_runs(tmp / "store", "diverge")
    status = {(k.data.tags["arm"], k.data.tags["data.per_class"]): k.info.status for k in kids}
    assert status == {("lg", "20"): "FINISHED", ("lg", "40"): "FINISHED",
                      ("diverge", "20"): "FAILED", ("diverge", "40"): "FAILED"}
    assert parent.info.status == "FINISHED"


def test_the_default_sweep_is_an_experiment_that_reaches_a_verdict():
    """python jobs/sweep.py with no arguments: baseline vs LG, 2 seeds, 20 digits per class, a carved
    test split, every trial to the end (no scheduler dropping a seed from its arm's mean)."""
    import sweep as sweep_job
    from raylg.preflight import preflight
    from raylg.ray.console import plan

    s = spec_lib.load(sweep_job.DEFAULT, check=preflight)
    assert plan(s) == "4 trials (2 arms x 2 seeds)" and s.baseline_arm == "baseline" and not s.asha
    cfgs = [s.trial_config({"arm": a, "seed": k}) for a in s.spec.arms for k in s.spec.seeds]
    assert sorted({c.guidance.locality.beta for c in cfgs}) == [0.0, 2.5]
    assert {(c.data.name, c.data.per_class, c.data.test_fraction) for c in cfgs} == {("digits", 20, 0.3)}
    assert sorted({c.data.split_seed for c in cfgs}) == [1, 2]
    teacher = teachers_lib.teacher_config(s, cfgs[0])  # learns from the trial's own images only
    assert (teacher.data.per_class, teacher.data.test_fraction, teacher.data.split_seed) == (20, 0.3, cfgs[0].data.split_seed)


# --- bad input: refused at load, before Ray starts ----------------------------------------


@pytest.mark.parametrize("fields, message", [
    ({"arms": {"lg": {"data.per_class": 10}}}, "arms.lg overrides data.per_class, which space also sweeps"),
    ({"baseline_arm": "none_such"}, "baseline_arm: 'none_such' names no arm"),
    ({"seeds": []}, "seeds: an empty list runs no trial"),
    ({"seeds": [1, 2, 1]}, "seeds: [1] repeated"),
    ({"arms": {"baseline": {"guidance.locality.beta": -1.0}, "lg": {}}},
     "arms.baseline: guidance.locality.beta: -1.0 is out of range"),
    ({"arms": {"baseline": {"optim.lrr": 1.0}}}, "arms.baseline: unknown config key 'optim.lrr'"),
    ({"arms": {"dist": {"guidance.distill_token.weight": 1.0}}, "set": {**FAST, "model.name": "deit_micro_patch4_32"},
      "space": {"model.name": {"grid": ["deit_micro_patch4_32", "pvt_v2_micro"]}}},
     "arms.dist: space.model.name (grid value 'pvt_v2_micro')"),
    ({"space": {"data.per_class": {"randint": [10, 40]}}}, "the teacher learns from this field"),
    ({"seed_fields": ["run.seed"], "space": {"run.seed": {"grid": [1, 2]}}}, "space sweeps run.seed, which seeds set"),
])
def test_bad_experiment_specs_are_refused_at_load(tmp_path, fields, message):
    from raylg.preflight import preflight

    with pytest.raises(ConfigError) as e:
        spec_lib.load(write(tmp_path, "bad", **fields), check=preflight)
    assert message in str(e.value)


def test_seeds_set_the_split_seed_unless_told_otherwise(tmp_path):
    s = spec_lib.load(write(tmp_path, "s", seed_fields=spec_lib.SweepSpec().seed_fields))
    cfg = s.trial_config({"arm": "baseline", "seed": 7, "data.per_class": 20})
    assert (cfg.run.seed, cfg.data.split_seed, cfg.guidance.locality.beta, cfg.data.per_class) == (7, 7, 0.0, 20)


def test_a_fixed_teacher_that_does_not_fit_a_point_is_refused_naming_it(digits_teacher, tmp_path):
    """teacher.path (trained on every digits image) against a space over per_class."""
    s = spec_lib.load(write(tmp_path, "fixed", teacher={"path": str(digits_teacher)}, seeds=None, arms={}))
    with pytest.raises(teachers_lib.TeacherStageError, match=r"trial point \(data.per_class 20\): "
                                                                     r".*per_class: teacher 0 vs run 20"):
        sweep_lib.resolve_teachers(s, sweep_lib.Paths.of(s))
    ok = spec_lib.load(write(tmp_path, "fits", teacher={"path": str(digits_teacher)}, seeds=None, arms={}, space={}))
    assert sweep_lib.resolve_teachers(ok, sweep_lib.Paths.of(ok)).fixed == str(digits_teacher.resolve())
