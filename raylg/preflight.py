"""Checks a config against the registries and files it names, before any data loads or
training starts: dataset and model names (listing the valid ones), the student's patch grid
at the configured size, each guidance term against the student (raylg.task.check_terms), and
the teacher file against its card."""

from __future__ import annotations

from raylg.config import ConfigError


def preflight(cfg, *, teacher: bool = False) -> None:
    """`teacher`: a teacher will be there even though cfg names none yet (a sweep that trains
    its own), so LG's layer map is checked too."""
    from raylg import teacher as teacher_lib
    from raylg.data import DATASETS
    from raylg.task import check_terms

    if cfg.data.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {cfg.data.name!r} (valid: {', '.join(sorted(DATASETS))})")
    teacher = teacher or bool(cfg.teacher.path) or cfg.guidance.locality.source == "shards"
    check_terms(cfg, teacher=teacher)  # on the meta device: shapes only, no memory, no init cost
    if cfg.teacher.path:
        teacher_lib.verify(cfg.teacher.path)
