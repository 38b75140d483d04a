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
