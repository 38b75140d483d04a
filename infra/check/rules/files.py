"""The files themselves: every YAML file parses, and the kustomization renders."""

from __future__ import annotations

import re

import yaml

from ..violation import Violation


def yaml_parses(bundle):
    """Every YAML file of the kustomization tree (and its folders) parses."""
    files = {f for f in bundle.tree.files if f.suffix in (".yaml", ".yml")}
    for kfile in bundle.tree.kustomizations:
        files.update(kfile.parent.glob("*.yaml"))
        files.update(kfile.parent.glob("*.yml"))
    for path in sorted(files):
        if not path.is_file():
            if path in bundle.tree.files:
                yield Violation(bundle.rel(path), "file", "is referenced but does not exist")
            continue
        try:
            list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "file"
            problem = getattr(exc, "problem", None) or str(exc)
            yield Violation(bundle.rel(path), where, f"is not valid YAML: {problem}")


_KLOG_PREFIX = re.compile(r'^[EWIF]\d{4} [\d:.]+\s+\d+ \S+\] "command failed" err=')


def kustomize_renders(bundle):
    """`kubectl kustomize` renders the target."""
    if bundle.render_error:
        kfile = bundle.tree.kustomizations[0] if bundle.tree.kustomizations else bundle.target
        message = _KLOG_PREFIX.sub("", bundle.render_error.strip().splitlines()[-1])
        yield Violation(bundle.rel(kfile), "kustomization", f"kubectl kustomize fails: {message[:600]}")
