"""Dataset registry: name -> loader(cfg: DataConfig) -> Source."""

from __future__ import annotations

from typing import Callable

from .errors import DataError

DATASETS: dict[str, Callable] = {}


def register(name: str):
    """Decorator: register a loader under ``name`` (what ``data.name`` selects)."""

    def deco(fn):
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = fn
        return fn

    return deco


def get_loader(name: str) -> Callable:
    if name not in DATASETS:
        raise DataError(f"data.name: unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]
