"""Evaluate trained weights on a named split: the reference's ``run_net.py --mode test``.

    from raylg.evaluate import evaluate
    result = evaluate("runs/digits-lg", split="test")                    # a run directory
    result = evaluate("runs/digits-lg/checkpoints/best", split="val")    # a checkpoint directory
    result = evaluate("runs/digits-lg/student.safetensors", split="test",
                      overrides={"data.root": "/data/cifar"}, mlflow=("http://mlflow:5000", run_id))

What a path may be (anything else is refused, naming the three):
- a **run directory** (``config.yaml`` beside ``student.safetensors``, or ``checkpoints/best/``
  or ``checkpoints/last/`` when the run never finished): its best student;
- a **checkpoint directory** (``model.safetensors`` + ``state.json`` + ``config.yaml``): the
  student part of the trainable module (guidance heads are ignored);
- a **student .safetensors file** (what a run exports, the student alone), with the run's
  ``config.yaml`` beside it, or the config given as ``config=``.

The config says which dataset, split recipe (per_class, val_fraction, split_seed) and student
to rebuild; ``overrides`` change fields first (a dataset's root on this machine, the eval batch
size, the device). The split is rebuilt exactly as the run drew it and its fingerprint is
compared with the run's ``data.json`` when there is one. Weights that do not fit the rebuilt
student (another architecture, another number of classes) are refused before evaluating,
naming the mismatched tensors.

Top-1 / top-5 / loss come from ``raylg.engine.evaluate`` (the training loop's own metric code,
on ``Task.predict``); the same pass records each prediction, giving per-class accuracy and the
confusion matrix (rows: true class, columns: predicted). Written beside the weights:
``eval_<split>.json`` and ``eval_<split>_confusion.png`` (a run directory's go in the run
directory, a checkpoint's in the checkpoint directory). With ``mlflow=(uri, run_id)`` the
metrics (``eval/<split>/top1`` ..., per class ``eval/<split>/class/<name>``) and both files go
to that MLflow run too; an unreachable URI or an unknown run id is refused before evaluating.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from raylg import checkpoint, config as config_lib, engine
from raylg.files import atomic_path, write_text_atomic

SPLITS = ("val", "test")
RUN_HINT = ("a run directory (config.yaml with student.safetensors or checkpoints/best/), a checkpoint directory "
            "(model.safetensors + state.json + config.yaml) or a student .safetensors file (config.yaml beside it)")


class EvaluateError(ValueError):
    """The weights, split or tracking target cannot be evaluated as asked; the message says why."""


@dataclass
class Weights:
    kind: str  # "run" | "checkpoint" | "student"
    path: Path  # the file or checkpoint directory the tensors come from
    out_dir: Path  # where the JSON and PNG go
    config: Path  # the config.yaml the student is rebuilt from
    run_dir: Optional[Path]  # the run directory (for data.json), when known
    epoch: Optional[int] = None  # the checkpoint's epoch (0-based), when known


def locate(path: str | Path, config: str | Path | None = None) -> Weights:
    """What ``path`` is (run directory, checkpoint directory, student file) and where its config is."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EvaluateError(f"{str(p)!r} does not exist; give {RUN_HINT}")
    cfg_path = Path(config).expanduser() if config else None
    if p.is_file():
        if p.suffix != ".safetensors":
            raise EvaluateError(f"{str(p)!r} is a file but not .safetensors weights; give {RUN_HINT}")
        if p.name == checkpoint.MODEL_FILE and checkpoint.find(p.parent) == p.parent:
            return locate(p.parent, config)  # a checkpoint's model file: the checkpoint
        run_dir = p.parent if (p.parent / "config.yaml").is_file() else None
        return Weights("student", p, p.parent, _config(cfg_path or p.parent / "config.yaml", p), run_dir)
    ckpt = checkpoint.find(p)
    if ckpt is not None:
        state = json.loads((ckpt / checkpoint.STATE_FILE).read_text())
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
        return Weights("checkpoint", ckpt, ckpt, _config(cfg_path or ckpt / checkpoint.CONFIG_FILE, ckpt), run_dir,
                       epoch=state.get("epoch"))
    if (p / "config.yaml").is_file():
        if (p / "student.safetensors").is_file():  # the best student; summary.json says its epoch
            return Weights("run", p / "student.safetensors", p, _config(cfg_path or p / "config.yaml", p), p,
                           epoch=_best_epoch(p))
        for name in ("best", "last"):
            ckpt = checkpoint.find(p / "checkpoints" / name)
            if ckpt is not None:
                state = json.loads((ckpt / checkpoint.STATE_FILE).read_text())
                return Weights("run", ckpt, p, _config(cfg_path or p / "config.yaml", p), p, epoch=state.get("epoch"))
        raise EvaluateError(f"run directory {str(p)!r} holds no weights: no student.safetensors and no "
                            f"checkpoints/best/ or checkpoints/last/ (did the run write a checkpoint?)")
    raise EvaluateError(f"{str(p)!r} is none of {RUN_HINT}")


def _best_epoch(run_dir: Path) -> Optional[int]:
    try:
        return int(json.loads((run_dir / "summary.json").read_text())["best"]["epoch"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _config(path: Path, weights: Path) -> Path:
    if not path.is_file():
        raise EvaluateError(f"no config for {str(weights)!r}: looked for {str(path)!r}; pass the run's config "
                            f"(--config) to say which dataset and student these weights belong to")
    return path


def _student_tensors(w: Weights) -> dict[str, torch.Tensor]:
    """The student's tensors: a student file as is, a checkpoint's ``student.*`` entries."""
    file = w.path if w.path.is_file() else w.path / checkpoint.MODEL_FILE
    try:
        tensors = checkpoint.load_file(str(file), device="cpu")
    except Exception as e:  # a truncated or foreign file
        raise EvaluateError(f"cannot read {str(file)!r} as safetensors: {e}") from None
    if w.path.is_file() and not any(k.startswith("student.") for k in tensors):
        return tensors
    student = {k[len("student."):]: v for k, v in tensors.items() if k.startswith("student.")}
    if not student:
        raise EvaluateError(f"{str(file)!r} holds no student.* tensors (keys: {', '.join(sorted(tensors)[:5])}...)")
    return student


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def check_fit(model: nn.Module, tensors: dict[str, torch.Tensor], what: str, file: Path) -> None:
    """EvaluateError naming every tensor that is missing, unexpected or of another shape."""
    want = model.state_dict()
    missing = [k for k in want if k not in tensors]
    unexpected = [k for k in tensors if k not in want]
    shapes = [f"{k} ({_shape(tensors[k])} in the file, {_shape(want[k])} in the model)"
              for k in want if k in tensors and tuple(tensors[k].shape) != tuple(want[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, names in (("shape mismatch", shapes), ("missing from the file", missing), ("not in the model", unexpected)):
        if names:
            more = f" (+{len(names) - 8} more)" if len(names) > 8 else ""
            parts.append(f"{label}: {', '.join(names[:8])}{more}")
    raise EvaluateError(f"the weights in {str(file)!r} do not fit {what}: " + "; ".join(parts))


class _Recorder(nn.Module):
    """Task.predict that also keeps each batch's top-1 prediction (in loader order)."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task
        self.preds: list[torch.Tensor] = []

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.task.predict(x)
        self.preds.append(logits.detach().argmax(dim=1))  # stays on the device until the end
        return logits


def _connect(mlflow: Optional[tuple[str, str]]):
    """A Tracker on the URI with the run checked to exist, or None; refused before any work."""
    if mlflow is None:
        return None
    uri, run_id = mlflow
    if not uri or not run_id:
        raise EvaluateError("MLflow logging needs both --mlflow-uri and --run-id (got "
                            f"uri {uri or 'none'!r}, run id {run_id or 'none'!r})")
    from raylg.tracking import Tracker, TrackingError, check_reachable

    try:
        check_reachable(uri)
    except TrackingError as e:
        raise EvaluateError(str(e)) from None
    tracker = Tracker(uri)
    try:
        tracker.client.get_run(run_id)
    except Exception as e:
        raise EvaluateError(f"MLflow run {run_id!r} is not in the tracking store {uri}: "
                            f"{str(e).splitlines()[0][:200]}") from None
    return tracker


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name)[:200]


def plot_confusion(confusion: np.ndarray, class_names: list[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (true class down, predicted across) as a PNG, Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    n = len(class_names)
    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    side = min(max(4.0, 0.35 * n + 2.0), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, ".tmp.png") as tmp:  # the suffix names the format for matplotlib
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def _device(want: str) -> torch.device:
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def evaluate(path: str | Path, split: str = "test", *, config: str | Path | None = None,
             overrides: Optional[dict[str, Any]] = None, mlflow: Optional[tuple[str, str]] = None,
             write: bool = True) -> dict[str, Any]:
    """Evaluate the weights at ``path`` on ``split``; returns (and writes) the result dict."""
    from raylg import data
    from raylg.models import create_classifier
    from raylg.task import Task, student_config

    if split not in SPLITS:
        raise EvaluateError(f"split {split!r}: evaluate on one of {', '.join(SPLITS)}")
    w = locate(path, config)
    tracker = _connect(mlflow)  # before any work: a wrong URI or run id costs nothing
    cfg = config_lib.load(w.config, overrides or {})
    bundle = data.build(cfg.data)
    ds = bundle.view(split)  # DataError naming the splits when the dataset lacks this one
    scfg = student_config(cfg)
    student = create_classifier(scfg, img_size=cfg.data.img_size, in_chans=bundle.in_chans,
                                num_classes=bundle.num_classes)
    tensors = _student_tensors(w)
    what = f"{scfg.name} ({bundle.in_chans} channels, {bundle.num_classes} classes of {bundle.name}, from {w.config})"
    check_fit(student, tensors, what, w.path)
    student.load_state_dict(tensors, strict=True)

    device = _device(cfg.run.device)
    task = Task(student).to(device)
    rec = _Recorder(task)
    loader = DataLoader(ds, batch_size=cfg.data.eval_batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    prefix = f"eval/{split}"
    metrics = engine.evaluate(rec, loader, device=device, precision=cfg.run.precision, prefix=prefix,
                              across_ranks=False)
    preds = torch.cat(rec.preds).cpu().numpy() if rec.preds else np.zeros(0, dtype=np.int64)
    labels = np.asarray(ds.labels, dtype=np.int64)
    k = bundle.num_classes
    confusion = np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)
    counts, correct = confusion.sum(axis=1), np.diag(confusion)
    names = bundle.class_names
    per_class = [{"class": names[c], "label": c, "count": int(counts[c]), "correct": int(correct[c]),
                  "accuracy": (100.0 * correct[c] / counts[c]) if counts[c] else None} for c in range(k)]
    present = [p["accuracy"] for p in per_class if p["accuracy"] is not None]
    fingerprint = bundle.fingerprint(split)
    result = {
        "weights": str(w.path), "kind": w.kind, "config": str(w.config), "epoch": w.epoch,
        "model": scfg.name, "dataset": bundle.name, "split": split, "img_size": cfg.data.img_size,
        "count": int(len(labels)),
        "top1": metrics[f"{prefix}/top1"], "top5": metrics[f"{prefix}/top5"], "loss": metrics[f"{prefix}/loss"],
        "mean_class_accuracy": float(np.mean(present)) if present else None,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "fingerprint": fingerprint,
        "matches_run_data": _matches_run(w.run_dir, split, fingerprint),
        "device": str(device), "precision": cfg.run.precision,
    }
    if abs(100.0 * correct.sum() / max(len(labels), 1) - result["top1"]) > 1e-6:  # same predictions, two counts
        raise RuntimeError(f"recorded predictions disagree with engine.evaluate: {correct.sum()} / {len(labels)} vs "
                           f"top-1 {result['top1']}")
    if write:
        out_json = w.out_dir / f"eval_{split}.json"
        png = plot_confusion(confusion, names, f"{scfg.name} on {bundle.name} {split} ({len(labels)} images): "
                             f"top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%",
                             w.out_dir / f"eval_{split}_confusion.png")
        result["files"] = {"json": str(out_json), "png": str(png)}
        if tracker is not None:
            result["mlflow"] = _log(tracker, mlflow[1], result, prefix, out_json, png)
        write_text_atomic(out_json, json.dumps(result, indent=2))
        if tracker is not None:
            tracker.client.log_artifact(mlflow[1], str(out_json), artifact_path="evaluation")
    return result


def _matches_run(run_dir: Optional[Path], split: str, fingerprint: dict) -> Optional[bool]:
    """Whether the rebuilt split has the sha256 the run recorded in data.json (None: no record)."""
    if run_dir is None or not (run_dir / "data.json").is_file():
        return None
    try:
        recorded = json.loads((run_dir / "data.json").read_text())["splits"]["splits"][split]["sha256"]
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
    return recorded == fingerprint["sha256"]


def _log(tracker, run_id: str, result: dict, prefix: str, out_json: Path, png: Path) -> dict:
    metrics = {f"{prefix}/top1": result["top1"], f"{prefix}/top5": result["top5"], f"{prefix}/loss": result["loss"]}
    if result["mean_class_accuracy"] is not None:
        metrics[f"{prefix}/mean_class_accuracy"] = result["mean_class_accuracy"]
    for p in result["per_class"]:
        if p["accuracy"] is not None:
            metrics[f"{prefix}/class/{_safe(p['class'])}"] = p["accuracy"]
    step = result["epoch"] if isinstance(result["epoch"], int) else 0
    items = list(metrics.items())
    for i in range(0, len(items), 500):  # MLflow's log_batch takes at most 1000 metrics
        tracker.log_metrics(run_id, dict(items[i:i + 500]), step=step)
    tracker.set_tags(run_id, {f"raylg.eval.{result['split']}": result["weights"]})
    tracker.client.log_artifact(run_id, str(png), artifact_path="evaluation")
    return {"uri": tracker.uri, "run_id": run_id, "metrics": len(metrics), "artifact_path": "evaluation"}
