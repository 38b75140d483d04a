"""Three Ray nodes on one machine: a head and two workers, each its own `ray start` process
group with its own ports, node caches (RAYLG_FEATURE_CACHE, RAYLG_TEACHER_CACHE) and 1 CPU,
token auth on; sweep storage on S3 (moto's server on 127.0.0.1, its request log kept to
count downloads); MLflow on the session's `mlflow server`. Every sweep runs as `jobs/sweep.py`
in a subprocess (the driver), so it can be killed.

- the driver is killed (SIGKILL) in the teacher stage, after one teacher is published and while
  the other trains; a half-written teacher (weights without a card, what a publisher killed
  between its two writes leaves) is put at the unfinished key; the restarted driver reuses the
  published teacher untouched, trains the other again, and no trial ever sees the half-written one;
- a sweep of two 2-worker DDP trials (each worker 0.9 CPU, so a trial's two workers can only run
  on two different nodes) with LG targets from feature shards on S3: one worker node is removed
  (its process group killed) while the second trial runs on it (one of its workers, and its Tune
  actor and Train controller when Ray placed them there); the trial resumes on the remaining
  nodes from its last checkpoint on S3, not from scratch, its metrics after the resume equal those of
  its twin (the first trial, the same config uninterrupted), which they could not with
  re-initialised LG aligners; the finished trial is not re-run; every MLflow run is FINISHED,
  one per trial; each node copied each shard once (its cache, and moto's GET count).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import (
    ROOT,
    S3_ACCESS_KEY_ID,
    S3_SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    TINY,
    free_port,
    mlflow_runs,
    pids_with_env,
    wait_port,
)

pytestmark = pytest.mark.slow

BUCKET = "multinode"
STORE = f"s3://{BUCKET}/raylg"
SHARDS = f"s3://{BUCKET}/features/digits"
PER_CLASS = 16  # 144 training images: 2 batches of 32 per worker
NODE_CPUS = 1
WORKER_CPUS = 0.9  # one worker per node: a 2-worker trial spans two nodes, whatever its trial actor holds


@contextlib.contextmanager
def state_api(dashboard: str):
    """Ray's state API asks RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, before its `address`
    argument: point the first at this cluster (other tests set RAY_ADDRESS to the session head)."""
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = dashboard
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class LoggedS3:
    """moto's server on 127.0.0.1 with its request log in a file (to count the GETs of each key)."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "moto.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self.proc, "moto server", self.log)
        self.env = {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
                    "AWS_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=S3_ACCESS_KEY_ID,
                            aws_secret_access_key=S3_SECRET_ACCESS_KEY, region_name="us-east-1")

    def keys(self, prefix: str) -> dict[str, dict]:
        out = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out.update({o["Key"]: o for o in page.get("Contents", [])})
        return out

    def gets(self) -> Counter:
        """Successful GETs of each object key so far (moto logs one line per request)."""
        n = Counter()
        for m in re.finditer(rf'"GET /{BUCKET}/([^ ?"]+)[^"]*" 20[06]', self.log.read_text(errors="replace")):
            n[m.group(1)] += 1
        return n

    def stop(self) -> None:
        _kill_group(self.proc)


class Node:
    """One `ray start --block` in its own process group, found again by a marker in its
    processes' environment (the raylet's workers inherit it) and stopped by both."""

    def __init__(self, name: str, root: Path, env: dict, args: list[str]):
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.features, self.teachers = self.dir / "features", self.dir / "teachers"
        self.marker = f"{SESSION_TOKEN}-{name}-{os.getpid()}"
        self.resource = "raylg_test_" + name.replace("-", "_")
        env = {**env, "RAYLG_TEST_NODE": self.marker, "RAYLG_FEATURE_CACHE": str(self.features),
               "RAYLG_TEACHER_CACHE": str(self.teachers)}
        ports = ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                 "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                 "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]
        self.log = self.dir / "ray-start.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["ray", "start", "--block", "--node-ip-address", "127.0.0.1",
                                          "--num-cpus", str(NODE_CPUS),
                                          "--num-gpus", "0", "--resources", json.dumps({self.resource: 1}),
                                          "--disable-usage-stats", *ports, *args],
                                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.node_id = ""

    def pids(self) -> list[int]:
        return pids_with_env(f"RAYLG_TEST_NODE={self.marker}")

    def stop(self) -> None:
        """SIGKILL: the node is gone at once, as when a machine dies."""
        _kill_group(self.proc)
        deadline = time.monotonic() + 20
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)


class Cluster:
    def __init__(self, root: Path, s3: LoggedS3):
        self.root, self.s3 = root, s3
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "RAYLG_"))},
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": SESSION_TOKEN, "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600", **s3.env,
                    # Ray's own state-API calls on the nodes (Ray Train's placement-group cleaner) find
                    # this cluster by it: other Ray clusters run on this machine too
                    "RAY_ADDRESS": self.address}
        self.temp = Path(tempfile.mkdtemp(prefix="rlmn", dir="/tmp"))  # short: unix socket paths
        self.nodes: list[Node] = []

    def start(self) -> None:
        """The head, then each worker once the one before it is up (a node that joins a head still
        starting can miss `ray start`'s 30 s registration window on a busy machine)."""
        self._add("head", ["--head", "--port", str(self.port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                           str(self.dashboard_port), "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.temp)])
        self.wait_nodes(1)
        for count, name in enumerate(("worker-a", "worker-b"), start=2):
            for attempt in range(2):  # a node that started but never registered is started once more
                node = self._add(name, ["--address", self.address])
                try:
                    self.wait_nodes(count, timeout=90)
                    break
                except RuntimeError:
                    if attempt:
                        raise
                    node.stop()
                    self.nodes.remove(node)

    def _add(self, name: str, args: list[str], tries: int = 2) -> Node:
        for attempt in range(tries):
            node = Node(name, self.root / f"try{attempt}", self.env, args)
            self.nodes.append(node)
            deadline = time.monotonic() + 150
            while node.proc.poll() is None and time.monotonic() < deadline:
                if b"Ray runtime started" in node.log.read_bytes():
                    return node
                time.sleep(0.5)
            node.stop()
            self.nodes.remove(node)
        raise RuntimeError(f"Ray node {name} did not start: {node.log.read_text()[-2000:]}")

    def alive_nodes(self) -> list:
        from ray.util.state import list_nodes

        with state_api(self.dashboard):
            return [n for n in list_nodes(address=self.dashboard, limit=100) if n.state == "ALIVE"]

    def wait_nodes(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                alive = self.alive_nodes()
            except Exception:  # noqa: BLE001 (the dashboard is still starting)
                alive = []
            if len(alive) == count:
                break
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"node {node.name} exited: {node.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                logs = "; ".join(f"{n.name}: {n.log.read_text()[-600:]}" for n in self.nodes)
                raise RuntimeError(f"{len(alive)} of {count} Ray nodes came up: {[n.node_name for n in alive]} ({logs})")
            time.sleep(1)
        for node in self.nodes:  # which Ray node is which: by its own custom resource
            (node.node_id,) = [n.node_id for n in alive if node.resource in (n.resources_total or {})]

    def node(self, node_id: str) -> Node:
        (node,) = [n for n in self.nodes if n.node_id == node_id]
        return node

    def stop(self) -> None:
        import shutil

        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp, ignore_errors=True)

    def driver_env(self, home: Path) -> dict:
        return {**self.env, "HOME": str(home), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT), "RAYLG_FEATURE_CACHE": str(home / "features"),
                "RAYLG_TEACHER_CACHE": str(home / "teachers")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    s3 = LoggedS3(root)
    c = Cluster(root, s3)
    try:
        s3.client().create_bucket(Bucket=BUCKET)
        t0 = time.monotonic()
        c.start()
        print(f"\nmultinode: 3 Ray nodes up in {time.monotonic() - t0:.0f} s")
        yield c
    finally:
        c.stop()
        s3.stop()


@pytest.fixture(scope="module")
def shards(cluster):
    """The LG targets of the sweep's training images, as shards on S3: an untrained (seeded)
    ResNet-20 with a card for those images, its stage maps precomputed in several shards."""
    import torch

    from raylg import config as config_lib, data, teacher as teacher_lib
    from raylg.features import precompute
    from raylg.models import create_teacher

    bundle = data.build(config_lib.load(TINY, {"data.per_class": PER_CLASS}).data)
    torch.manual_seed(0)
    model = create_teacher("resnet20_cifar", in_chans=1, num_classes=10)
    weights = cluster.root / "shard-teacher.safetensors"
    teacher_lib.save(model, weights, arch="resnet20_cifar", in_chans=1, num_classes=10, img_size=32,
                     stage_channels=[16, 32, 64], val_top1=0.0, fingerprint=bundle.fingerprint("train"), config={})
    with pytest.MonkeyPatch.context() as mp:
        for k, v in cluster.s3.env.items():
            mp.setenv(k, v)
        for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
            mp.delenv(k, raising=False)
        m = precompute(str(weights), bundle, SHARDS, shard_mb=0.5, batch_size=64, progress=False, log=lambda *a: None)
    names = [s["name"] for s in m["shards"]]
    assert len(names) > 1
    return m


def write_spec(tmp: Path, name: str, **spec) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "run_config": str(TINY), "storage": STORE, "asha": "off", **spec}))
    return path


def start_driver(cluster: Cluster, spec: Path, tmp: Path, log_name: str) -> tuple[subprocess.Popen, Path]:
    log = tmp / log_name
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "sweep.py"), "--config", str(spec)], cwd=ROOT,
                                env=cluster.driver_env(tmp / "home"), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail(f"the sweep did not finish in {timeout:.0f} s: {log.read_text()[-3000:]}")
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    return out


# --- the driver killed in the teacher stage -------------------------------------------------

def teacher_tasks(cluster: Cluster) -> list[int]:
    """PIDs of the nodes' processes running a teacher task (Ray titles them ray::raylg-teacher)."""
    out = []
    for node in cluster.nodes:
        for pid in node.pids():
            try:
                if b"raylg-teacher" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
            except OSError:
                pass
    return out


SMALL, LARGE = 5, 120  # per_class of the two data settings: their teachers train 1 vs 17 batches an epoch


def test_driver_killed_in_the_teacher_stage_reuses_published_teachers_and_never_a_half_written_one(
        cluster, mlflow_server, tmp_path):
    import hashlib

    s3 = cluster.s3
    t0 = time.monotonic()
    spec = write_spec(tmp_path, "teachers",
                      set={"schedule.epochs": 1, "schedule.warmup_epochs": 0, "run.max_train_batches": 1,
                           "optim.batch_size": 32, "data.eval_batch_size": 512},
                      space={"data.per_class": {"grid": [SMALL, LARGE]}},
                      teacher={"config": str(ROOT / "jobs/configs/teacher-digits-tiny.yaml"),
                               "set": {"schedule.epochs": 2, "data.eval_batch_size": 512}},
                      max_concurrent=2, resources={"workers": 0, "cpus_per_worker": WORKER_CPUS},
                      mlflow_uri=mlflow_server.url)
    proc, log = start_driver(cluster, spec, tmp_path, "first.log")
    cards = {}
    try:
        deadline = time.monotonic() + 300
        while not cards:  # the first card published: kill the driver at once
            cards = {k.split("/")[2]: o for k, o in s3.keys("raylg/_teachers/").items() if k.endswith("/teacher.json")}
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no teacher was published (driver exit {proc.poll()}): {log.read_text()[-3000:]}")
            time.sleep(0.2)
        training_at_kill = teacher_tasks(cluster)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        _kill_group(proc)
    first = log.read_text()
    training = dict(re.findall(r"teacher (\w+): training .*\(data\.per_class (\d+);", first))
    assert len(training) == 2, first
    small = next(k for k, pc in training.items() if int(pc) == SMALL)
    large = next(k for k, pc in training.items() if int(pc) == LARGE)
    assert set(cards) == {small}, (cards, training)  # killed while the large teacher trained
    # the killed driver's teacher task dies with it (Ray ends the tasks of a dead owner)
    assert training_at_kill, "no teacher task was running when the driver was killed"
    deadline = time.monotonic() + 60
    while set(teacher_tasks(cluster)) & set(training_at_kill):
        assert time.monotonic() < deadline, "the teacher task outlived its driver"
        time.sleep(0.5)
    published = s3.keys(f"raylg/_teachers/{small}/")
    assert sorted(k.rsplit("/", 1)[1] for k in published) == ["teacher.json", "teacher.safetensors"]
    # what a publisher killed between its two writes leaves: weights (here cut short), no card
    assert not s3.keys(f"raylg/_teachers/{large}/teacher.json")
    s3.client().put_object(Bucket=BUCKET, Key=f"raylg/_teachers/{large}/teacher.safetensors", Body=b"\x08\x00half")

    proc, log = start_driver(cluster, spec, tmp_path, "second.log")
    second = finish(proc, log)
    assert f"teacher {small}: reusing" in second and f"teacher {large}: training" in second, second
    assert f"teacher {large}: reusing" not in second
    after = s3.keys("raylg/_teachers/")
    for key, obj in published.items():  # the reused teacher is untouched
        assert after[key]["ETag"] == obj["ETag"] and after[key]["LastModified"] == obj["LastModified"]
    card = json.loads(s3.client().get_object(Bucket=BUCKET, Key=f"raylg/_teachers/{large}/teacher.json")["Body"].read())
    body = s3.client().get_object(Bucket=BUCKET, Key=f"raylg/_teachers/{large}/teacher.safetensors")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == card["sha256"] and len(body) > 1000
    _, parents, children = mlflow_runs(None, "teachers", uri=mlflow_server.url)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    by_pc = {int(c.data.params["data.per_class"]): c for c in children}
    assert by_pc[SMALL].data.params["teacher.path"] == f"{STORE}/_teachers/{small}/teacher.safetensors"
    assert by_pc[LARGE].data.params["teacher.path"] == f"{STORE}/_teachers/{large}/teacher.safetensors"
    assert all(c.data.metrics["train/lg"] > 0 for c in children)  # trained with their teachers
    print(f"\nmultinode: teacher stage killed and resumed, 2 trials: {time.monotonic() - t0:.0f} s")


# --- a node removed under a running DDP trial ------------------------------------------------


def trial_rows(tmp: Path, name: str) -> dict[str, list[dict]]:
    """Each trial's metrics.jsonl (rank 0 writes it in the driver's sweep directory)."""
    out = {}
    for f in (tmp / "home" / ".cache" / "raylg" / "sweeps" / name / "trials").glob("*/metrics.jsonl"):
        out[f.parent.name] = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    return out


def train_actors(cluster: Cluster) -> list:
    """Ray Train's worker and controller actors, alive and dead (the state API, retried: the
    dashboard can be slow to answer on a busy machine)."""
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    for attempt in range(3):
        try:
            with state_api(cluster.dashboard):
                actors = list_actors(address=cluster.dashboard, limit=10_000)
            break
        except RayStateApiException:
            if attempt == 2:
                raise
            time.sleep(2)
    return [a for a in actors if a.class_name in ("RayTrainWorker", "TrainController")]


def tune_results(s3: LoggedS3, name: str) -> dict[str, list[dict]]:
    out = {}
    for key in s3.keys(f"raylg/{name}/"):
        if key.endswith("/result.json"):
            body = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            lines = [json.loads(l) for l in body.splitlines() if l.strip()]
            if lines:
                out[lines[0]["trial_id"]] = lines
    return out


EPOCHS = 4


def test_node_removed_under_a_ddp_trial(cluster, shards, mlflow_server, tmp_path):
    s3 = cluster.s3
    head = cluster.nodes[0]
    spec = write_spec(tmp_path, "spread",
                      set={"schedule.epochs": EPOCHS, "schedule.warmup_epochs": 0, "schedule.min_lr": 0.0,
                           "run.max_train_batches": 2, "data.per_class": PER_CLASS, "data.eval_batch_size": 512,
                           "guidance.locality.source": "shards", "guidance.locality.shards": SHARDS},
                      # the same config twice: the second trial is the one a node is taken from,
                      # the first is its uninterrupted twin
                      space={"run.seed": {"grid": [1, 1]}},
                      max_concurrent=1, resources={"workers": 2, "cpus_per_worker": WORKER_CPUS},
                      failures=2, mlflow_uri=mlflow_server.url)
    t0 = time.monotonic()
    proc, log = start_driver(cluster, spec, tmp_path, "driver.log")
    try:
        deadline = time.monotonic() + 600
        seen: list[str] = []  # trial ids in the order their runs began
        victim = None
        while victim is None:
            rows = trial_rows(tmp_path, "spread")
            seen += [t for t in sorted(rows) if t not in seen]
            # Tune has the second trial's first epoch: its checkpoint is registered with its Train run
            if len(seen) == 2 and re.search(rf"trial {seen[1]} (\(.*?\) )?epoch 1/{EPOCHS}:", log.read_text()):
                listing = train_actors(cluster)
                alive = [a for a in listing if a.state == "ALIVE"]
                ctrl = {a.node_id for a in alive if a.class_name == "TrainController"}
                workers = {a.node_id for a in alive if a.class_name == "RayTrainWorker"}
                seen_workers = {a.actor_id for a in listing if a.class_name == "RayTrainWorker"}
                if len(ctrl) == 1 and len(workers) == 2 and len(seen_workers) == 4:  # the whole listing: 2 trials' workers
                    # a node (not the head) with one of the trial's workers; when the trial's own
                    # actor and Train controller run there too, the trial is restarted by Tune and
                    # its Train run resumes, else Train restarts the worker group (Ray places them)
                    candidates = sorted(workers - {head.node_id}, key=lambda n: (n not in ctrl, n))
                    victim = cluster.node(candidates[0])
                    with_controller = victim.node_id in ctrl
                    known = seen_workers
                    break
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the second trial did not get going in time"
            time.sleep(0.3)
        rows_at_kill = len(trial_rows(tmp_path, "spread")[seen[1]])
        victim.stop()
        removed_at = time.monotonic()
        assert rows_at_kill < EPOCHS, "the trial finished before its node was removed"
        out = finish(proc, log)
    finally:
        _kill_group(proc)
    wall = time.monotonic() - t0
    first, second = seen

    # the sweep finished: one FINISHED MLflow run per trial under one FINISHED parent
    client, parents, children = mlflow_runs(None, "spread", uri=mlflow_server.url)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = {c.data.tags["raylg.trial_id"]: c for c in children}
    assert len(children) == 2 and set(runs) == {first, second}, out
    assert all(c.info.status == "FINISHED" and c.data.metrics["world_size"] == 2 for c in children)

    # the finished trial was not re-run; the interrupted one resumed from a checkpoint, not from scratch
    results = tune_results(s3, "spread")
    assert [r["epochs_done"] for r in results[first]] == list(range(1, EPOCHS + 1))
    done = [r["epochs_done"] for r in results[second]]
    assert done.count(1) == 1 and done[-1] == EPOCHS and sorted(set(done)) == list(range(1, EPOCHS + 1)), done
    rows = trial_rows(tmp_path, "spread")
    assert [r["epoch"] for r in rows[first]] == [r["epoch"] for r in rows[second]] == list(range(EPOCHS))

    # ... on the remaining nodes, and its LG aligners came back with the rest of the checkpoint:
    # every epoch after the resume matches the uninterrupted twin (re-initialised aligners would not)
    deadline = time.monotonic() + 60
    while True:  # a listing that holds every worker seen before (a busy dashboard can answer in part)
        actors = [a for a in train_actors(cluster) if a.class_name == "RayTrainWorker"]
        if known <= {a.actor_id for a in actors} or time.monotonic() > deadline:
            break
        time.sleep(2)
    resumed = {a.node_id for a in actors if a.actor_id not in known}
    assert len([a for a in actors if a.actor_id not in known]) == 2 and len(resumed) == 2, actors
    assert victim.node_id not in resumed  # its new worker group: on the two nodes left
    assert {a.node_id for a in actors} == {n.node_id for n in cluster.nodes}, "the trials did not spread over the 3 nodes"
    for key in ("train/loss", "train/ce", "train/lg", "val/loss", "val/top1"):
        a = {m.step: m.value for m in client.get_metric_history(runs[first].info.run_id, key)}
        b = {m.step: m.value for m in client.get_metric_history(runs[second].info.run_id, key)}
        assert sorted(a) == sorted(b) == list(range(EPOCHS)), (key, a, b)
        for step, value in a.items():
            assert b[step] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, step, a, b)
    for r1, r2 in zip(rows[first], rows[second]):
        for key in ("train/lg", "train/lg_mse", "val/loss"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-6), (key, r1["epoch"], r1[key], r2[key])

    # feature shards: each node that ran a worker copied each shard once
    names = sorted(s["sha256"] + ".arrow" for s in shards["shards"])
    for node in cluster.nodes:
        assert sorted(p.name for p in node.features.glob("*.arrow")) == names, node.name
        assert not list(node.features.glob(".*.part")), node.name
    gets = s3.gets()
    for s in shards["shards"]:
        assert gets[f"features/digits/{s['name']}"] == len(cluster.nodes), (s["name"], gets)
    print(f"\nmultinode: the removed node ran {'a worker and the controller' if with_controller else 'a worker'} "
          f"of the second trial, which reported epochs_done {done}")
    print(f"multinode: 2 DDP trials x {EPOCHS} epochs over 3 nodes, a node removed under the second: "
          f"{wall:.0f} s (resumed and finished {time.monotonic() - removed_at:.0f} s after the removal)")
