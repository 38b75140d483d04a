"""Checks a config against the registries and files it names, before any data loads or
training starts: dataset and model names (listing the valid ones), the student's patch grid
at the configured size, and the teacher file against its card."""

from __future__ import annotations

import torch

from raylg.config import ConfigError


def preflight(cfg) -> None:
    from raylg.data import DATASETS
    from raylg.models import create_classifier
    from raylg import teacher as teacher_lib

    if cfg.data.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {cfg.data.name!r} (valid: {', '.join(sorted(DATASETS))})")
    with torch.device("meta"):  # shapes only: no memory, no init cost
        create_classifier(cfg.model, img_size=cfg.data.img_size, in_chans=3, num_classes=10)
    if cfg.teacher.path:
        teacher_lib.verify(cfg.teacher.path)
