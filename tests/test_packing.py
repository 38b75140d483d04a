"""Several trials per GPU or per node: fractional GPUs refused where they cannot work (at load, then
against the cluster's nodes), how many trials the nodes hold at once, CPU trials packed on the
session's Ray head, and a trial process reused by the next trial (no second import)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from raylg import timing
from raylg.config import ConfigError
from raylg.ray import spec as spec_lib, sweep as sweep_lib

FAST = {"schedule.epochs": 2, "schedule.warmup_epochs": 1, "run.max_train_batches": 4, "data.eval_batch_size": 512}


def write_sweep(tmp_path: Path, name: str, space: dict, **extra) -> Path:
    spec = {"name": name, "run_config": str(TINY), "set": dict(FAST), "space": space, "max_concurrent": 2, "asha": "off",
            "resources": {"workers": 0, "cpus_per_worker": 1}, "storage": str(tmp_path / "store")}
    spec.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _interval(run_dir: Path, start: str = "loaders") -> tuple[float, float]:
    """When a trial trained: from its `start` mark (default: its loaders ready) to its last epoch's
    end (raylg.timing marks)."""
    marks = dict(timing.read(run_dir / "timing.json"))
    return marks[start], max(t for n, t in marks.items() if n.startswith("epoch_"))


def overlapping(run_dirs: list[Path], start: str = "loaders") -> bool:
    """Whether every pair of the trials was between `start` and its last epoch at the same time."""
    spans = [_interval(d, start) for d in run_dirs]
    return all(max(a[0], b[0]) < min(a[1], b[1]) for i, a in enumerate(spans) for b in spans[i + 1:])


# --- at load: no cluster needed ------------------------------------------------------------


@pytest.mark.parametrize("resources, message", [
    ({"workers": 2, "gpus_per_worker": 0.5},
     r"resources.gpus_per_worker: 0.5 with resources.workers: 2: .*NCCL fails \(Ray issue 48012\)"),
    ({"workers": 1, "gpus_per_worker": 1.5}, r"resources.gpus_per_worker: 1.5 is more than one GPU with a fractional part"),
    ({"workers": 0, "gpus_per_worker": 2}, r"resources.gpus_per_worker: 2 with resources.workers: 0: an in-process trial "
                                           r"trains in one process on one GPU"),
])
def test_fractional_gpus_that_cannot_work_are_refused_at_load(tmp_path, resources, message):
    path = write_sweep(tmp_path, "bad", {"optim.lr": {"grid": [1e-3]}}, resources=resources)
    with pytest.raises(ConfigError, match=message):
        spec_lib.load(path)


def test_fractional_and_whole_gpus_load(tmp_path):
    for resources in ({"workers": 1, "gpus_per_worker": 0.25}, {"workers": 2, "gpus_per_worker": 1},
                      {"workers": 1, "gpus_per_worker": 2}, {"workers": 0, "gpus_per_worker": 0.25},
                      {"workers": 0, "gpus_per_worker": 1}):
        r = spec_lib.load(write_sweep(tmp_path, "ok", {"optim.lr": {"grid": [1e-3]}}, resources=resources)).spec.resources
        assert (r.workers, r.gpus_per_worker) == (resources["workers"], resources["gpus_per_worker"])


def _sweep(tmp_path, max_concurrent=64, **resources) -> spec_lib.Sweep:
    return spec_lib.load(write_sweep(tmp_path, "n", {"optim.lr": {"grid": [1e-3]}}, max_concurrent=max_concurrent,
                                     resources=resources))


def test_how_many_trials_the_nodes_hold(tmp_path):
    one_gpu = [{"CPU": 16, "GPU": 1}]
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=1, gpus_per_worker=0.25), one_gpu) == 4
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=1, gpus_per_worker=0.1), one_gpu) == 10  # 1 / 0.1 is 9.999...
    assert sweep_lib.concurrency(_sweep(tmp_path, 3, workers=1, gpus_per_worker=0.25), one_gpu) == 3  # max_concurrent
    # a worker's share must fit on one node: 0.4 of a GPU is 2 per node, so 4 on two nodes (not 2 GPUs / 0.4 = 5)
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=1, gpus_per_worker=0.4), [{"CPU": 8, "GPU": 1}] * 2) == 4
    # CPUs of the node bound the packing too: 16 CPUs at 8 per worker
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=1, cpus_per_worker=8, gpus_per_worker=0.25), one_gpu) == 1
    # CPU trials: in-process ones take their CPUs; a Train run's Tune driver takes 0.01 CPU beside its worker
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=0, cpus_per_worker=1), [{"CPU": 4}]) == 4
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=1, cpus_per_worker=1), [{"CPU": 4}]) == 3
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=1, cpus_per_worker=0.99), [{"CPU": 4}]) == 4
    # in-process trials on a GPU share: the trial's own process holds its CPUs and its share
    assert sweep_lib.trial_resources(_sweep(tmp_path, workers=0, cpus_per_worker=2, gpus_per_worker=0.25)) == \
        {"cpu": 2, "gpu": 0.25}
    assert sweep_lib.trial_resources(_sweep(tmp_path, workers=1, gpus_per_worker=0.25)) == {"cpu": 0.01}  # its worker's
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=0, gpus_per_worker=0.25), one_gpu) == 4
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=0, gpus_per_worker=0.5), [{"CPU": 8, "GPU": 1}] * 2) == 4
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=0, cpus_per_worker=4, gpus_per_worker=0.1), one_gpu) == 4
    # DDP trials spread their workers over the cluster
    assert sweep_lib.concurrency(_sweep(tmp_path, workers=2, gpus_per_worker=1), [{"CPU": 8, "GPU": 1}] * 4) == 2


def test_gpu_requests_no_node_can_hold_are_refused(tmp_path):
    two_nodes = [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}]
    with pytest.raises(sweep_lib.SweepError, match=r"resources.gpus_per_worker: 2 GPUs per worker, but no node .* "
                                                   r"\(GPUs per node: 1, 1\)"):
        sweep_lib.check_resources(_sweep(tmp_path, workers=1, gpus_per_worker=2), two_nodes)
    with pytest.raises(sweep_lib.SweepError, match=r"1 workers x 0.25 GPUs = 0.25 GPUs but the Ray cluster has 0 GPUs .*"
                                                   r"GPUs per node: 0\).*resources.gpus_per_worker"):
        sweep_lib.check_resources(_sweep(tmp_path, workers=1, gpus_per_worker=0.25), [{"CPU": 8}])
    sweep_lib.check_resources(_sweep(tmp_path, workers=1, gpus_per_worker=0.25), two_nodes)  # fits: no error
    with pytest.raises(sweep_lib.SweepError, match=r"each trial asks for 0.5 GPUs in its own process \(workers: 0\) but the "
                                                   r"Ray cluster has 0 GPUs .*GPUs per node: 0, 0\).*resources.gpus_per_worker"):
        sweep_lib.check_resources(_sweep(tmp_path, workers=0, gpus_per_worker=0.5), [{"CPU": 8}, {"CPU": 8}])
    sweep_lib.check_resources(_sweep(tmp_path, workers=0, gpus_per_worker=0.5), two_nodes)  # fits: no error


# --- on the session's Ray head (4 CPUs, no GPU) -----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 0])
def test_fractional_gpu_on_a_cluster_without_one_is_refused_before_any_trial(ray_head, tmp_path, workers):
    path = write_sweep(tmp_path, "quarter", {"optim.lr": {"grid": [1e-3]}},
                       resources={"workers": workers, "cpus_per_worker": 1, "gpus_per_worker": 0.25})
    with pytest.raises(sweep_lib.SweepError, match=r"0.25 GPUs (in its own process \(workers: 0\) )?but the Ray cluster "
                                                   r"has 0 GPUs .*resources.gpus_per_worker"):
        sweep_lib.run(spec_lib.load(path))
    assert not (tmp_path / "store" / "quarter" / "trials").exists()  # no trial (nor teacher) started


@pytest.mark.slow
def test_cpu_trials_share_the_node_and_a_trial_process_serves_the_next(ray_head, tmp_path):
    """Three in-process trials of 1 CPU, two at a time: the first two train together; the third runs in
    a process a finished trial leaves (Tune reuses actors), so it imports nothing and builds no data."""
    path = write_sweep(tmp_path, "packed", {"optim.lr": {"grid": [3e-3, 2e-3, 1e-3]}})
    rows = sweep_lib.run(spec_lib.load(path))
    assert [r["status"] for r in rows] == ["FINISHED"] * 3
    trials = sorted((tmp_path / "store" / "packed" / "trials").iterdir(), key=lambda d: _interval(d)[0])
    assert len(trials) == 3 and overlapping(trials[:2])
    marks = [dict(timing.read(d / "timing.json")) for d in trials]
    assert all("import_start" in m for m in marks[:2])  # fresh processes: their imports are in the breakdown
    assert "import_start" not in marks[2]  # a reused one: none
    assert marks[2]["data"] - marks[2]["fit_start"] < marks[0]["data"] - marks[0]["fit_start"]  # built data reused
    assert all(json.loads((d / "summary.json").read_text())["epochs"] == 2 for d in trials)
