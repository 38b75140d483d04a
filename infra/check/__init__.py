"""Offline validation of raylg's Kubernetes deployment (infra/): a development tool
beside the manifests, not part of the raylg package.

    python infra/check                                  # every overlay and Dockerfile
    python infra/check infra/overlays/single-gpu        # one overlay (and the Dockerfiles)
    python infra/check rules                            # what is checked, and by which tool

It renders an overlay with `kubectl kustomize`, runs the rules in rules.RULES over the
result (and over infra/'s Dockerfiles and pyproject.toml), runs checkov's Kubernetes
policies over the same objects (the pods KubeRay will create included, see projection.py)
and hadolint over the Dockerfiles, and reports every violation with the file and field to
fix, not just the first. Nothing here talks to a cluster.
"""

from __future__ import annotations

from pathlib import Path

from .bundle import Bundle, load
from .kustomize import KubectlMissing
from .rules import RULES, rule_name
from .violation import Violation

__all__ = ["Violation", "KubectlMissing", "check", "check_bundle", "overlays", "RULES"]


def check_bundle(bundle: Bundle, rules=RULES) -> list[Violation]:
    """Run RULES over BUNDLE; a rule that crashes is itself reported, the others still run."""
    found: list[Violation] = []
    for rule in rules:
        name = rule_name(rule)
        try:
            found.extend(Violation(v.file, v.field, v.message, name) for v in rule(bundle))
        except Exception as exc:  # a bug in a rule must not hide the other rules' findings
            found.append(Violation(bundle.rel(bundle.target), "(rule)", f"crashed: {exc!r}", name))
    return found


def check(target: str | Path, rules=RULES, **options) -> list[Violation]:
    """Every violation in the kustomization at TARGET (options: crds=DIR, kubernetes_version)."""
    return check_bundle(load(Path(target), **options), rules)


def overlays(root: str | Path) -> list[Path]:
    """The overlay directories under ROOT/infra/overlays."""
    base = Path(root) / "infra" / "overlays"
    return sorted(p for p in base.iterdir() if (p / "kustomization.yaml").is_file()) if base.is_dir() else []
