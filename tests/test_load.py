"""Load: a sweep of many one-epoch trials of the micro student, two at a time, against a real
`mlflow server`. Every child run ends with the right status and the full config as params (none
rejected: MLflow refuses to change a logged param), no placement group or actor outlives the
sweep (Ray's state API), and the driver's memory stays flat from the sweep's second quarter to
its last. Prints trials/hour and the per-trial overhead (the time a trial holds its slot beyond
its training epoch)."""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import TINY
from raylg import config as config_lib
from raylg.ray import spec as spec_lib, sweep as sweep_lib

pytestmark = pytest.mark.slow

# 24 trials take ~3 minutes on this 2-core CPU when it is not shared (189 s at load average 5;
# each trial holds its slot ~15 s, nearly all of it its process start and setup, the epoch itself
# ~0.5 s); 64 took 632 s there. RAYLG_LOAD_TRIALS=64 runs the full-size load.
TRIALS = int(os.environ.get("RAYLG_LOAD_TRIALS", "24"))
CONCURRENCY = 2
FAST = {"schedule.epochs": 1, "schedule.warmup_epochs": 0, "schedule.min_lr": 0.0, "schedule.warmup_lr": 0.0,
        "run.max_train_batches": 1, "optim.batch_size": 32, "data.eval_batch_size": 512,
        "model.name": "deit_micro_patch4_32", "guidance.locality.beta": 2.5}
RSS_GROWTH_MB = 64  # allowed rise of the driver's RSS from the sweep's second quarter to its last


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Sampler(threading.Thread):
    """The driver's RSS every half second, while the sweep runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.samples.append((time.monotonic(), rss_mb()))
            self.done.wait(0.5)

    def quarter(self, k: int) -> list[float]:
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        lo, hi = t0 + (t1 - t0) * k / 4, t0 + (t1 - t0) * (k + 1) / 4
        return [m for t, m in self.samples if lo <= t <= hi]


def alive(ray_head):
    from ray.util.state import list_actors, list_placement_groups

    pgs = [p.placement_group_id for p in list_placement_groups(address=ray_head.dashboard, limit=10_000)
           if p.state != "REMOVED"]
    actors = [(a.class_name, a.actor_id) for a in list_actors(address=ray_head.dashboard, limit=10_000) if a.state != "DEAD"]
    return set(pgs), set(actors)


def test_many_trials_against_an_mlflow_server(ray_head, mlflow_server, digits_teacher, tmp_path):
    spec = {"name": "load", "run_config": str(TINY), "set": dict(FAST), "teacher": {"path": str(digits_teacher)},
            "space": {"run.seed": {"grid": list(range(1, TRIALS + 1))}}, "asha": "off", "max_concurrent": CONCURRENCY,
            "resources": {"workers": 0, "cpus_per_worker": 1}, "storage": str(tmp_path / "store"),
            "mlflow_uri": mlflow_server.url}
    path = tmp_path / "load.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = spec_lib.load(path)
    pgs_before, actors_before = alive(ray_head)

    sampler = Sampler()
    sampler.start()
    start = time.monotonic()
    try:
        rows = sweep_lib.run(sweep, log=lambda *a: None)
    finally:
        sampler.done.set()
        sampler.join()
    wall = time.monotonic() - start

    assert len(rows) == TRIALS and all(r["status"] == "FINISHED" and not r["stopped_early"] for r in rows), \
        [(r["trial"], r["status"], r.get("error")) for r in rows if r["status"] != "FINISHED"]
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("load")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    kids = [r for r in runs if r.data.tags.get("raylg.role") == "trial"]
    (parent,) = [r for r in runs if r.data.tags.get("raylg.role") == "sweep"]
    assert len(kids) == TRIALS and len({k.data.tags["raylg.trial_id"] for k in kids}) == TRIALS  # one run per trial
    assert parent.info.status == "FINISHED" and all(k.info.status == "FINISHED" for k in kids)
    # every param is the trial's own config, all of it: nothing was rejected or left out
    seeds = set()
    for k in kids:
        cfg = sweep.trial_config({"run.seed": int(k.data.params["run.seed"])})
        want = {key: str(v)[:6000] for key, v in config_lib.flatten(cfg).items() if key not in ("run.name", "run.out_dir",
                                                                                                "run.progress", "teacher.path")}
        got = {key: v for key, v in k.data.params.items() if key in want}
        assert got == want, {key: (got.get(key), v) for key, v in want.items() if got.get(key) != v}
        seeds.add(k.data.params["run.seed"])
        assert k.data.metrics["train/lg"] > 0 and "val/top1" in k.data.metrics
    assert seeds == {str(s) for s in range(1, TRIALS + 1)}
    log = mlflow_server.log.read_text()
    assert "Changing param values is not allowed" not in log and "INVALID_PARAMETER_VALUE" not in log

    # nothing outlives the sweep (Ray Train removes its placement groups asynchronously)
    deadline = time.monotonic() + 60
    while True:
        pgs, actors = alive(ray_head)
        new_pgs, new_actors = pgs - pgs_before, actors - actors_before
        if (not new_pgs and not new_actors) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not new_pgs and not new_actors, (new_pgs, new_actors)

    q2, q4 = sampler.quarter(1), sampler.quarter(3)
    growth = statistics.median(q4) - statistics.median(q2)
    epoch_s = statistics.mean(k.data.metrics["epoch_time_s"] for k in kids)
    slot_s = wall * CONCURRENCY / TRIALS
    print(f"\nload: {TRIALS} trials at concurrency {CONCURRENCY} in {wall:.0f} s = {TRIALS / wall * 3600:.0f} trials/hour; "
          f"a trial holds its slot {slot_s:.1f} s, of which its training epoch {epoch_s:.2f} s: "
          f"overhead {slot_s - epoch_s:.1f} s "
          f"per trial; driver RSS median {statistics.median(q2):.0f} MB (2nd quarter) -> {statistics.median(q4):.0f} MB "
          f"(last quarter), peak {max(m for _, m in sampler.samples):.0f} MB")
    assert growth < RSS_GROWTH_MB, f"the driver's RSS grew {growth:.0f} MB from the sweep's second quarter to its last"
