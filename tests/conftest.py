"""Shared fixtures. Everything here is real: real digits images, a teacher trained by the
real job, real servers started by the fixtures that need them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))  # jobs/*.py are importable as modules in tests

from raylg import config as config_lib  # noqa: E402

TINY = ROOT / "jobs" / "configs" / "digits-tiny.yaml"


def tiny_config(tmp_path: Path, **overrides):
    """The digits preset cut down to seconds: 2 epochs of at most 4 batches, no progress bar."""
    base = {"run.out_dir": str(tmp_path), "run.progress": False, "schedule.epochs": 2, "schedule.warmup_epochs": 1,
            "run.max_train_batches": 4, "data.eval_batch_size": 512}
    base.update(overrides)
    return config_lib.load(TINY, base)


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
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on port {port} (exit code {proc.poll()})")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 and pyarrow at the moto server with test credentials; returns the endpoint."""
    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    return s3_server
