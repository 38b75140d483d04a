"""``run.init_from``: start a run's student from weights trained elsewhere (RelViT's upstream
self-supervised stage, then supervised training from its weights; any earlier run).

The path may be:

- a run directory: its ``checkpoints/last/`` (the end of that run; a self-supervised stage's
  "best" checkpoint is chosen by the val top-1 of a head it never trained, so last is the one);
- a checkpoint directory (``model.safetensors`` + ``state.json``): its ``student.*`` tensors;
  the guidance heads (``terms.*``) are never loaded, the new run builds its own;
- a ``.safetensors`` file of the student alone (a run's exported ``student.safetensors``).

The student is loaded whole and strictly, classifier head included: the weights must come from
the same architecture with the same number of classes. (A self-supervised stage builds its
student with the run's classes too; with ``guidance.ce_weight: 0`` that head is frozen at its
initialisation, so the supervised stage starts from an untrained head, as from a fresh one.)
Anything else is refused before training, naming every tensor that does not fit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from raylg import checkpoint
from raylg.checkpoint import CheckpointError

STUDENT_PREFIX = "student."


def _resolve(path: str) -> tuple[Path, str]:
    """(the safetensors file to read, a note on what trained it)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        try:  # a run's student.safetensors names its model in the metadata
            with safe_open(str(p), framework="pt") as f:
                model = (f.metadata() or {}).get("model")
        except Exception:
            model = None
        return p, (f" (exported from model {model!r})" if model else "")
    if p.is_dir():
        ckpt = checkpoint.find(p) or checkpoint.find(p / "checkpoints" / "last")
        if ckpt is not None:
            try:
                saved = checkpoint.read_config(ckpt)
                note = f" (trained as model.name={saved.model.name!r} on data.name={saved.data.name!r})"
            except Exception:  # a config from an older or foreign run: the tensors still say enough
                note = ""
            return ckpt / checkpoint.MODEL_FILE, note
    raise CheckpointError(f"run.init_from {path!r}: not a run directory (with checkpoints/last/), a checkpoint "
                          f"directory (with {checkpoint.MODEL_FILE} and {checkpoint.STATE_FILE}) or a .safetensors file")


def student_weights(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The student's tensors stored at path (prefix ``student.`` dropped; guidance heads left out)."""
    file, note = _resolve(path)
    try:
        tensors = checkpoint.load_file(str(file), device="cpu")
    except Exception as e:
        raise CheckpointError(f"run.init_from {path!r}: {str(file)!r} is unreadable: {e}") from None
    if any(k.startswith(STUDENT_PREFIX) for k in tensors):  # a task checkpoint: student + guidance heads
        tensors = {k[len(STUDENT_PREFIX):]: v for k, v in tensors.items() if k.startswith(STUDENT_PREFIX)}
    return tensors, note


def _names(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def mismatches(student: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """What keeps tensors from loading into student strictly, one phrase per kind; [] when they fit."""
    want = student.state_dict()
    shapes = [f"{k} (weights {tuple(tensors[k].shape)} vs student {tuple(v.shape)})"
              for k, v in want.items() if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    missing = [k for k in want if k not in tensors]
    extra = [k for k in tensors if k not in want]
    out = []
    if shapes:
        out.append(f"shapes differ: {_names(shapes)}")
    if missing:
        out.append(f"missing from the weights: {_names(missing)}")
    if extra:
        out.append(f"not in the student: {_names(extra)}")
    return out


def load_student(student: nn.Module, path: str, *, model_name: str, num_classes: int) -> None:
    """Load path's student weights into student, strictly; CheckpointError naming the tensors that differ."""
    tensors, note = student_weights(path)
    bad = mismatches(student, tensors)
    if bad:
        raise CheckpointError(f"run.init_from {path!r}{note} does not fit the student {model_name!r} with "
                              f"{num_classes} classes: {'; '.join(bad)}")
    with torch.no_grad():
        student.load_state_dict(tensors, strict=True)
