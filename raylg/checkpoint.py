"""Checkpoints: safetensors for every tensor, JSON for the rest; nothing is ever unpickled.

A checkpoint is a directory:

    model.safetensors      the trainable module's state (student + guidance heads)
    optimizer.safetensors  optimizer moments and the torch RNG states
    state.json             epoch, step, optimizer param groups, python/numpy RNG, metrics
    config.yaml            the resolved run config

`save` writes NAME.tmp/ and swaps it in with renames, so an interruption at any point leaves
the previous checkpoint readable (`load` falls back to NAME.old/ if the swap was cut short).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file  # noqa: F401  (load_file: re-exported for readers)

from raylg import config as config_lib
from raylg.files import atomic_path

MODEL_FILE, OPTIM_FILE, STATE_FILE, CONFIG_FILE = "model.safetensors", "optimizer.safetensors", "state.json", "config.yaml"


class CheckpointError(RuntimeError):
    pass


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save(directory: str | Path, *, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None, cfg,
         epoch: int, step: int, metrics: dict[str, Any] | None = None) -> Path:
    """Write checkpoint `directory` atomically; returns its path."""
    final = Path(directory)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(tmp / MODEL_FILE))
    rng_tensors, rng_meta = rng_state()
    opt_tensors, opt_meta = _optimizer_split(optimizer) if optimizer is not None else ({}, None)
    save_file({**opt_tensors, **rng_tensors}, str(tmp / OPTIM_FILE))
    meta = {"epoch": epoch, "step": step, "optimizer": opt_meta, "rng": rng_meta, "metrics": metrics or {}}
    (tmp / STATE_FILE).write_text(json.dumps(meta))
    config_lib.save(cfg, tmp / CONFIG_FILE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find(directory: str | Path) -> Path | None:
    """The readable checkpoint at `directory`, or its .old twin if a swap was interrupted."""
    d = Path(directory)
    for cand in (d, d.with_name(d.name + ".old")):
        if (cand / STATE_FILE).is_file() and (cand / MODEL_FILE).is_file():
            return cand
    return None


def read_config(directory: str | Path):
    d = find(directory)
    if d is None:
        raise CheckpointError(f"no checkpoint in {str(directory)!r} (expected {MODEL_FILE} and {STATE_FILE})")
    return config_lib.load(d / CONFIG_FILE)


def load(directory: str | Path, *, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         restore_rng: bool = True, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Restore module (strictly), optimizer and RNG; returns state.json's dict (epoch, step, metrics)."""
    d = find(directory)
    if d is None:
        raise CheckpointError(f"no checkpoint in {str(directory)!r} (expected {MODEL_FILE} and {STATE_FILE})")
    try:
        weights = load_file(str(d / MODEL_FILE), device=str(map_location))
        extra = load_file(str(d / OPTIM_FILE), device="cpu")
        meta = json.loads((d / STATE_FILE).read_text())
    except Exception as e:  # truncated or foreign files
        raise CheckpointError(f"checkpoint {str(d)!r} is unreadable: {e}") from None
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {str(d)!r} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None and meta.get("optimizer") is not None:
        optimizer.load_state_dict(_optimizer_join(extra, meta["optimizer"]))
    if restore_rng:
        set_rng_state(extra, meta["rng"])
    return meta


def export_weights(module: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write one module's weights (e.g. the student alone, for inference) atomically."""
    p = Path(path)
    with atomic_path(p) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp), metadata=metadata)
    return p
