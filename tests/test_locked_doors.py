"""Locked doors, on real servers: the session's Ray head (token auth) refuses `ray job submit` and a
Ray client connection without the token; `mlflow server --app-name basic-auth` refuses strangers,
and a sweep given credentials through MLflow's standard environment variables records every trial;
neither the MLflow nor the S3 credentials reach any run's params, tags or artifacts, or the console."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import MLFLOW_PASSWORD, MLFLOW_USER, ROOT, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, TINY
from raylg.ray import spec as spec_lib, sweep as sweep_lib
from raylg.tracking import TrackingError

pytestmark = pytest.mark.slow

CLIENT = """
import os, sys
import grpc
import ray
from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

address = sys.argv[1]
try:
    ray.init(address)
    print("CONNECTED", ray.get(ray.put(41)) + 1)
except Exception as e:
    print("REFUSED", type(e).__name__, e)
# what the server answers under the client's retries: a ping on the client protocol (the proxy
# answers it itself), without a token, with a wrong one and with the head's
stub = ray_client_pb2_grpc.RayletDriverStub(grpc.insecure_channel(address[len("ray://"):]))
for name, token in (("none", None), ("wrong", "0" * 32), ("right", os.environ["PROBE_TOKEN"])):
    try:
        stub.ClusterInfo(ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING), timeout=60,
                         metadata=[("authorization", "Bearer " + token)] if token else None)
        print("PING", name, "OK")
    except grpc.RpcError as e:
        print("PING", name, e.code().name, e.details())
"""


def stranger_env(ray_head, tmp_path: Path, token: str | None = None) -> dict:
    """The head's environment without its token (and a HOME with no ~/.ray/auth_token)."""
    env = {k: v for k, v in ray_head.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


def test_ray_job_submit_and_client_without_the_token_are_refused(ray_head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    sid = f"locked-{secrets.token_hex(4)}"
    for token in (None, secrets.token_hex(16)):  # no token at all, then the wrong one
        out = subprocess.run(["ray", "job", "submit", "--address", ray_head.dashboard, "--submission-id", f"{sid}-{bool(token)}",
                              "--no-wait", "--", "python", "-c", "print(1)"],
                             env=stranger_env(ray_head, tmp_path, token), capture_output=True, text=True, timeout=120)
        text = out.stdout + out.stderr
        assert out.returncode != 0, text[-2000:]
        expected = "Missing authentication token" if token is None else "Invalid authentication token"
        assert "AuthenticationError" in text and expected in text, text[-2000:]
    jobs = JobSubmissionClient(ray_head.dashboard).list_jobs()  # this process holds the token
    assert not [j for j in jobs if (j.submission_id or "").startswith(sid)]  # nothing was submitted

    probe = subprocess.run([sys.executable, "-c", CLIENT, ray_head.client_address],
                           env={**stranger_env(ray_head, tmp_path), "PROBE_TOKEN": ray_head.token},
                           capture_output=True, text=True, timeout=300)
    said = probe.stdout + probe.stderr[-3000:]
    assert "REFUSED ConnectionError" in probe.stdout and "CONNECTED" not in probe.stdout, said
    assert "PING none UNAUTHENTICATED Invalid or missing authentication token" in probe.stdout, said
    assert "PING wrong UNAUTHENTICATED" in probe.stdout, said
    assert "PING right OK" in probe.stdout, said  # the port is live: the token is the difference


# --- MLflow basic-auth, and credentials that must never be recorded --------------------------


def test_mlflow_basic_auth_refuses_unauthenticated_requests(mlflow_auth_server, tmp_path, monkeypatch):
    srv = mlflow_auth_server
    assert srv.request("GET", "/health")[0] == 200  # public, as the reachability check needs
    for auth in (None, (MLFLOW_USER, "not-the-password-123"), ("nobody", MLFLOW_PASSWORD)):
        status, body = srv.request("GET", "/api/2.0/mlflow/experiments/search?max_results=5", auth=auth)
        assert status == 401, (auth, status, body)
        status, _ = srv.request("POST", "/api/2.0/mlflow/experiments/create", {"name": "intruder"}, auth=auth)
        assert status == 401
    assert srv.request("GET", "/api/2.0/mlflow/experiments/search?max_results=5", auth=(MLFLOW_USER, MLFLOW_PASSWORD))[0] == 200
    # a sweep without credentials is refused before Ray starts, saying what to set
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    path = write_sweep(tmp_path, "nocreds", storage=str(tmp_path / "store"), mlflow_uri=srv.url)
    with pytest.raises(TrackingError, match=r"refused a query: .*error code 401.* set MLFLOW_TRACKING_USERNAME and "
                                            r"MLFLOW_TRACKING_PASSWORD"):
        sweep_lib.run(spec_lib.load(path))


FAST = {"schedule.epochs": 1, "schedule.warmup_epochs": 0, "schedule.min_lr": 0.0, "schedule.warmup_lr": 0.0,
        "run.max_train_batches": 2, "data.eval_batch_size": 512, "model.name": "deit_micro_patch4_32"}


def write_sweep(tmp: Path, name: str, **fields) -> Path:
    spec = {"name": name, "run_config": str(TINY), "set": dict(FAST), "space": {"guidance.locality.beta": {"grid": [0.0, 2.5]}},
            "asha": "off", "max_concurrent": 2, "resources": {"workers": 0, "cpus_per_worker": 1}}
    spec.update(fields)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def secrets_in(blob: bytes, named: dict[str, str]) -> list[str]:
    return [name for name, value in named.items() if value.encode() in blob]


def test_sweep_with_mlflow_credentials_and_s3_storage_records_no_secret(ray_head, mlflow_auth_server, s3_env, digits_teacher,
                                                                        tmp_path, monkeypatch):
    """The driver gets MLflow's credentials from MLFLOW_TRACKING_USERNAME/PASSWORD and S3's from the
    standard AWS variables; the Ray nodes have both in their own environment (as infra/ sets them
    from Secrets). Every run's params, tags and artifacts, and the job's console, are scanned."""
    import boto3

    srv = mlflow_auth_server
    basic = base64.b64encode(f"{MLFLOW_USER}:{MLFLOW_PASSWORD}".encode()).decode()
    named = {"MLflow password": MLFLOW_PASSWORD, "MLflow basic-auth header": basic, "S3 secret key": S3_SECRET_ACCESS_KEY,
             "S3 access key id": S3_ACCESS_KEY_ID}
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket="locked")
    path = write_sweep(tmp_path, "locked", storage="s3://locked/raylg", mlflow_uri=srv.url, teacher={"path": str(digits_teacher)})
    env = {**os.environ, "HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
           "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD}
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "sweep.py"), "--config", str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-4000:]
    assert secrets_in(console.encode(), named) == []

    client = MlflowClient(srv.url)  # this process reads the server as the sweep's user
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD)
    exp = client.get_experiment_by_name("locked")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    kids = [r for r in runs if r.data.tags.get("raylg.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("raylg.role") == "sweep"]
    assert len(parents) == 1 and len(kids) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {k.data.params["guidance.locality.beta"] for k in kids} == {"0.0", "2.5"}
    scanned = 0
    for run in runs:
        fields = "\n".join(f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()).encode()
        assert secrets_in(fields, {**named, "MLflow user": MLFLOW_USER}) == [], run.info.run_name
        local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / run.info.run_id)))
        files = [f for f in local.rglob("*") if f.is_file()]
        assert files, run.info.run_name
        for f in files:
            assert secrets_in(f.read_bytes(), named) == [], f
            scanned += 1
    assert scanned >= 2 + 2 * 2  # the parent's table and plot, each trial's config and weights at least
