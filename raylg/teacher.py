"""The CNN teacher on disk and at training time.

On disk a teacher is WEIGHTS.safetensors plus WEIGHTS.json beside it (its card): the
architecture, classes, channels, input size, val accuracy, the dataset fingerprint it was
trained on, its resolved config, and the sha256 of the weights file. Loading checks the hash
and, when the run's data is given, the fingerprint; nothing is unpickled.

At training time `OnlineTeacher` gives the LG targets: the student's augmented, normalised
image resized (bilinear) to the teacher's resolution, run under no_grad. Its BatchNorm mode
is a choice: "train" (batch statistics, what the reference code does) or "eval" (running
statistics). Its parameters are never handed to an optimizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from raylg.checkpoint import export_weights
from raylg.files import sha256_file, write_text_atomic
from raylg.guidance.base import TeacherOut


class TeacherError(ValueError):
    pass


def card_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save(model: torch.nn.Module, weights: str | Path, *, arch: str, in_chans: int, num_classes: int, img_size: int,
         stage_channels: list[int], val_top1: float, fingerprint: dict[str, Any], config: dict[str, Any]) -> dict:
    """Write weights then the card (the card is written last: a teacher without one is incomplete)."""
    weights = Path(weights)
    export_weights(model, weights)
    card = {"arch": arch, "in_chans": in_chans, "num_classes": num_classes, "img_size": img_size,
            "stage_channels": stage_channels, "val_top1": val_top1, "fingerprint": fingerprint,
            "config": config, "weights": weights.name, "sha256": sha256_file(weights)}
    write_text_atomic(card_path(weights), json.dumps(card, indent=2))
    return card


def publish(run_dir: str | Path, weights: str | Path | None = None) -> tuple[Path, dict]:
    """Turn a finished classifier run (jobs/train_teacher.py) into a teacher: its best weights
    plus a card built from the run's config, data fingerprint and best val accuracy."""
    from raylg import config as config_lib
    from raylg.models import create_teacher

    run_dir = Path(run_dir)
    cfg = config_lib.load(run_dir / "config.yaml")
    info = json.loads((run_dir / "data.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    model = create_teacher(cfg.model.name, in_chans=info["in_chans"], num_classes=info["num_classes"])
    model.load_state_dict(load_file(str(run_dir / "student.safetensors")), strict=True)
    with torch.no_grad():
        model.eval()
        probe = torch.zeros(1, info["in_chans"], cfg.data.img_size, cfg.data.img_size)
        channels = [int(t.shape[1]) for t in model.forward_stages(probe)]
    weights = Path(weights) if weights else run_dir / "teacher.safetensors"
    card = save(model, weights, arch=cfg.model.name, in_chans=info["in_chans"], num_classes=info["num_classes"],
                img_size=cfg.data.img_size, stage_channels=channels, val_top1=summary["best"]["val/top1"],
                fingerprint=info["fingerprint"], config=config_lib.flatten(cfg))
    return weights, card


def read_card(weights: str | Path) -> dict:
    weights = Path(weights)
    if not weights.is_file():
        raise TeacherError(f"teacher weights {str(weights)!r} not found (train one with jobs/train_teacher.py)")
    cp = card_path(weights)
    if not cp.is_file():
        raise TeacherError(f"teacher card {str(cp)!r} not found beside the weights; re-save with jobs/train_teacher.py")
    try:
        return json.loads(cp.read_text())
    except json.JSONDecodeError as e:
        raise TeacherError(f"teacher card {str(cp)!r} is not valid JSON: {e}") from None


def check_data(card: dict, fingerprint: dict[str, Any], num_classes: int, where: str) -> None:
    """The teacher must have been trained on the same images and classes as the run's data."""
    if card["num_classes"] != num_classes:
        raise TeacherError(f"teacher {where} has {card['num_classes']} classes but the run's data has {num_classes}")
    theirs = card["fingerprint"]
    keys = ("name", "split", "per_class", "seed", "count", "sha256")
    diff = {k: (theirs.get(k), fingerprint.get(k)) for k in keys if theirs.get(k) != fingerprint.get(k)}
    if diff:
        lines = ", ".join(f"{k}: teacher {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise TeacherError(f"teacher {where} was trained on other data than this run ({lines})")


def verify(weights: str | Path, expect_sha256: str | None = None) -> dict:
    """The card, after checking the weights' sha256 against it (and against expect_sha256 when given)."""
    card = read_card(weights)
    digest = sha256_file(weights)
    if digest != card["sha256"]:
        raise TeacherError(f"teacher weights {str(weights)!r} have sha256 {digest[:12]}… but the card says "
                           f"{card['sha256'][:12]}…: the file is corrupt or was replaced")
    if expect_sha256 and digest != expect_sha256:
        raise TeacherError(f"teacher weights {str(weights)!r} have sha256 {digest[:12]}…, expected {expect_sha256[:12]}…")
    return card


def load(weights: str | Path, *, fingerprint: dict[str, Any] | None = None, num_classes: int | None = None,
         expect_sha256: str | None = None):
    """(model, card): weights hash-checked against the card, card checked against the run's data."""
    from raylg.models import create_teacher  # models import timm; keep this module light to import

    weights = Path(weights)
    card = verify(weights, expect_sha256)
    if fingerprint is not None:
        check_data(card, fingerprint, num_classes if num_classes is not None else card["num_classes"], repr(str(weights)))
    model = create_teacher(card["arch"], in_chans=card["in_chans"], num_classes=card["num_classes"])
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise TeacherError(f"teacher weights {str(weights)!r} are unreadable: {e}") from None
    model.load_state_dict(state, strict=True)
    return model, card


class OnlineTeacher:
    """Runs the frozen teacher on the student's batch. Deliberately not an nn.Module attribute
    of the task: it is not trained, not checkpointed and not wrapped by DDP."""

    def __init__(self, model: torch.nn.Module, img_size: int, bn_mode: str = "train"):
        self.model, self.img_size, self.bn_mode = model, img_size, bn_mode
        self.model.train(bn_mode == "train")
        for p in self.model.parameters():
            p.requires_grad_(False)

    def to(self, device) -> "OnlineTeacher":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: dict) -> TeacherOut:
        x = batch["image"]
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        self.model.train(self.bn_mode == "train")
        stages, logits = self.model.forward_stages(x, with_logits=True)
        return TeacherOut(stages=stages, logits=logits)
