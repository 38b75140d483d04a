"""Shared fixtures. Everything here is real: real digits images, a teacher trained by the
real job, real servers started by the fixtures that need them."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))  # jobs/*.py are importable as modules in tests

from raylg import config as config_lib  # noqa: E402
from raylg.fit import Hooks  # noqa: E402

TINY = ROOT / "jobs" / "configs" / "digits-tiny.yaml"


def tiny_config(tmp_path: Path, **overrides):
    """The digits preset cut down to seconds: 2 epochs of at most 4 batches, no progress bar."""
    base = {"run.out_dir": str(tmp_path), "run.progress": False, "schedule.epochs": 2, "schedule.warmup_epochs": 1,
            "run.max_train_batches": 4, "data.eval_batch_size": 512}
    base.update(overrides)
    return config_lib.load(TINY, base)


class Crash(RuntimeError):
    """A run killed on purpose (tests of resume and interrupted saves)."""


class CrashAfter(Hooks):
    """fit() hooks that raise Crash in the report of epoch `epochs`, after its checkpoint is written."""

    def __init__(self, epochs: int):
        self.left = epochs

    def report(self, metrics, checkpoint_dir):
        self.left -= 1
        if self.left == 0:
            raise Crash("simulated kill after the checkpoint was written")


def seeded_student(name, img_size=32, in_chans=3, num_classes=10, drop_path=0.0, **kwargs):
    """A student built the way runs build it, with torch's seed at 0 first (model tests)."""
    import torch

    from raylg.config import ModelConfig
    from raylg.models import create_student

    torch.manual_seed(0)
    return create_student(ModelConfig(name=name, drop_path=drop_path, kwargs=kwargs), img_size, in_chans, num_classes)


def random_images(img_size=32, in_chans=3, batch=2):
    """A fixed batch of random images (seed 1)."""
    import torch

    return torch.randn(batch, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(1))


def same(a, b):
    """Equal to float32 rounding (rtol and atol 1e-5)."""
    import torch

    return torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def mlflow_runs(store: Path | None, name: str, uri: str | None = None):
    """(client, parent runs, trial runs) of sweep `name` in its default MLflow store under `store`, or
    at the tracking `uri` (a server)."""
    from mlflow.tracking import MlflowClient

    from raylg.tracking import default_uri

    client = MlflowClient(uri or default_uri(store / name))
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("raylg.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("raylg.role") == "trial"]
    return client, parents, children


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A ResNet-20 teacher trained on digits by jobs/train_teacher.py (3 short epochs)."""
    import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    return train_teacher.main(["--out", str(out), "--name", "t", "--set", "run.progress=false",
                               "--set", "schedule.epochs=3", "--set", "run.max_train_batches=10"])


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 for the session; yields its
    endpoint URL and is stopped by its PID. Tests point AWS_ENDPOINT_URL at it (see s3_env)."""
    import subprocess

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "moto server", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# The session's S3 credentials (moto accepts any): distinctive, so tests can look for leaks of them.
S3_ACCESS_KEY_ID = "AKIARAYLG" + __import__("secrets").token_hex(6).upper()
S3_SECRET_ACCESS_KEY = "s3secret-" + __import__("secrets").token_hex(16)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 and pyarrow at the moto server with test credentials; returns the endpoint."""
    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
                       "AWS_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    return s3_server


# --- one Ray cluster for the whole test session ------------------------------------------

# Ray reads its auth mode once per process, so token auth is set before anything imports ray:
# the session's head, the drivers the tests start and the `ray job` CLI all share this token.
import os as _os  # noqa: E402
import secrets as _secrets  # noqa: E402

SESSION_TOKEN = _secrets.token_hex(16)
_os.environ["RAY_AUTH_MODE"] = "token"
_os.environ["RAY_AUTH_TOKEN"] = SESSION_TOKEN


def wait_port(port: int, proc, what: str, log: Path | None = None, timeout: float = 60) -> None:
    """Until something listens on 127.0.0.1:port; RuntimeError (with the end of `log`) when `proc`
    exits first or `timeout` passes."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = f": {log.read_text()[-2000:]}" if log is not None else f" (exit code {proc.poll()})"
                raise RuntimeError(f"{what} did not start on port {port}{tail}") from None
            time.sleep(0.1)


def pids_with_env(entry: str) -> list[int]:
    """The processes (but this one) whose environment holds `entry` (KEY=VALUE): what a Ray node
    started by a test spawned, found by a value only that node's environment carries."""
    import os

    want, out = entry.encode(), []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                if want in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                    out.append(int(d))
            except OSError:
                pass
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A `ray start --head` cluster with token auth, in its own temp dir and ports. Its
    processes are found and stopped by PID: every one of them inherits this head's unique
    token in its environment (never `ray stop`, which would end other users' clusters)."""

    def __init__(self, root: Path, s3_endpoint: str | None = None, num_gpus: int = 0):
        import subprocess

        self.token = SESSION_TOKEN
        self.temp = Path(__import__("tempfile").mkdtemp(prefix="rlg", dir="/tmp"))  # short: unix socket paths
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.client_port = free_port()
        self.client_address = f"ray://127.0.0.1:{self.client_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {**__import__("os").environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600", "RAY_USAGE_STATS_ENABLED": "0"}
        if s3_endpoint:  # the nodes know the object store, as a KubeRay pod's env does (infra/)
            self.env.update(AWS_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID=S3_ACCESS_KEY_ID,
                            AWS_SECRET_ACCESS_KEY=S3_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION="us-east-1")
        # ... and MLflow's client credentials (the `mlflow_auth_server` user), as infra/ sets them from a Secret
        self.env.update(MLFLOW_TRACKING_USERNAME=MLFLOW_USER, MLFLOW_TRACKING_PASSWORD=MLFLOW_PASSWORD)
        subprocess.run(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                        "--ray-client-server-port", str(self.client_port), "--num-cpus", "4", "--num-gpus", str(num_gpus),
                        # the node's other listeners too: another Ray on this machine holds the defaults
                        "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                        "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
                        "--temp-dir", str(self.temp), "--disable-usage-stats"],
                       env=self.env, check=True, capture_output=True, timeout=180)

    def pids(self) -> list[int]:
        return pids_with_env(f"RAY_AUTH_TOKEN={self.token}")

    def stop(self) -> None:
        import os
        import signal
        import time

        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while self.pids() and time.time() < deadline:
                time.sleep(0.5)


@contextlib.contextmanager
def serving(head: RayHead):
    """RAY_ADDRESS names `head` while it serves (a driver connected elsewhere is disconnected first);
    then the driver disconnects, the head stops and RAY_ADDRESS is put back."""
    import os

    import ray

    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = head.address
    try:
        yield head
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.stop()
        if saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory, s3_server):
    """The session's Ray head: 4 CPUs, no GPU (tests/test_cuda.py starts its own with the GPUs)."""
    with serving(RayHead(tmp_path_factory.mktemp("ray"), s3_endpoint=s3_server)) as head:
        yield head


# --- MLflow tracking servers (`mlflow server`), started by the tests that need one ------------

# The sweep's MLflow user on the basic-auth server; the Ray head's nodes have these in their env.
MLFLOW_USER = "sweeper-" + _secrets.token_hex(4)
MLFLOW_PASSWORD = "mlflowpw-" + _secrets.token_hex(16)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (a free port, sqlite store and artifacts in its own dir),
    optionally with `--app-name basic-auth` (admin from MLFLOW_AUTH_ADMIN_*, one sweep user).
    Started in its own process group, which is stopped by the PID of the process started here."""

    def __init__(self, root: Path, auth: bool = False):
        import os
        import subprocess
        import time
        import urllib.request

        self.root, self.auth = root, auth
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner (8 more processes); runs don't need it
        cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
        if auth:
            self.admin = ("admin", "adminpw-" + _secrets.token_hex(16))
            (root / "basic_auth.ini").write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{root / 'auth.db'}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                "auth_cache_ttl_seconds = 300\n")  # else every request pays a PBKDF2 hash (seconds on a busy CPU)
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(root / "basic_auth.ini"), MLFLOW_AUTH_ADMIN_USERNAME=self.admin[0],
                       MLFLOW_AUTH_ADMIN_PASSWORD=self.admin[1], MLFLOW_FLASK_SERVER_SECRET_KEY=_secrets.token_hex(16))
            cmd += ["--app-name", "basic-auth"]
        self.log = root / "server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not start on {self.url}: {self.log.read_text()[-2000:]}")
                time.sleep(0.5)
        if auth:  # the sweep's own (non-admin) user, as infra/README.md has it created
            self.request("POST", "/api/2.0/mlflow/users/create", {"username": MLFLOW_USER, "password": MLFLOW_PASSWORD},
                         auth=self.admin)

    def request(self, method: str, path: str, body: dict | None = None, auth: tuple[str, str] | None = None):
        """(HTTP status, body text) of one request, with basic auth when given."""
        import base64
        import json
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A plain `mlflow server` (no auth) for the session."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` for the session, with the user MLFLOW_USER."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), auth=True)
    try:
        yield server
    finally:
        server.stop()
