"""Render a kustomization with `kubectl kustomize`, and index the files it is built from.

The index lets a violation found in the rendered output name the file that set the
field: the last patch that touches it, else the resource file that defines the object.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .tools import ToolMissing, find

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class KubectlMissing(ToolMissing):
    """kubectl is not installed (or not on PATH / $KUBECTL)."""


def kubectl() -> str:
    try:
        return find("kubectl", "KUBECTL", "install it (Debian package `kubectl`)")
    except ToolMissing as exc:
        raise KubectlMissing(str(exc)) from None


def render(target: Path) -> list[dict]:
    """`kubectl kustomize TARGET`, parsed. Raises RuntimeError with kubectl's message on failure."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(target)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"kubectl kustomize exited {proc.returncode}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


@dataclass
class Source:
    """A document that contributes to a rendered object."""

    file: Path
    kind: str  # "resource", "patch" (strategic merge) or "jsonpatch"
    doc: object  # the YAML document (a dict; a list of operations for "jsonpatch")
    target: dict = field(default_factory=dict)  # {"kind", "name"} the document applies to


@dataclass
class Tree:
    """The files of one kustomization, its bases and components, in build order."""

    sources: list[Source] = field(default_factory=list)
    kustomizations: list[Path] = field(default_factory=list)
    generated: dict[str, Path] = field(default_factory=dict)  # ConfigMap/Secret name -> kustomization
    files: list[Path] = field(default_factory=list)  # every local file referenced


def _load_docs(path: Path) -> list:
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError):
        return []  # reported by the yaml-parses rule


def _target_of(doc) -> dict:
    if isinstance(doc, dict):
        return {"kind": doc.get("kind"), "name": (doc.get("metadata") or {}).get("name")}
    return {}


def walk(directory: Path, tree: Tree | None = None) -> Tree:
    """Index DIRECTORY's kustomization (recursively). Never raises on bad input."""
    tree = tree if tree is not None else Tree()
    kfile = kustomization_file(directory)
    if kfile is None or kfile in tree.kustomizations:
        return tree
    tree.kustomizations.append(kfile)
    tree.files.append(kfile)
    try:
        spec = yaml.safe_load(kfile.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return tree
    if not isinstance(spec, dict):
        return tree
    for entry in list(spec.get("resources") or []) + list(spec.get("components") or []):
        if not isinstance(entry, str) or "://" in entry:
            continue
        path = (directory / entry).resolve()
        if path.is_dir():
            walk(path, tree)
        elif path.is_file():
            tree.files.append(path)
            for doc in _load_docs(path):
                tree.sources.append(Source(path, "resource", doc, _target_of(doc)))
    for gen in list(spec.get("configMapGenerator") or []) + list(spec.get("secretGenerator") or []):
        if isinstance(gen, dict) and gen.get("name"):
            tree.generated[gen["name"]] = kfile
            for ref in list(gen.get("envs") or []) + list(gen.get("files") or []):
                tree.files.append((directory / str(ref).split("=")[-1]).resolve())
    patches = list(spec.get("patches") or [])
    patches += [{"path": p} for p in spec.get("patchesStrategicMerge") or [] if isinstance(p, str)]
    for patch in patches:
        if not isinstance(patch, dict) or not patch.get("path"):
            continue
        path = (directory / patch["path"]).resolve()
        tree.files.append(path)
        docs = _load_docs(path)
        target = patch.get("target") or {}
        if len(docs) == 1 and isinstance(docs[0], list):
            tree.sources.append(Source(path, "jsonpatch", docs[0], dict(target)))
        else:
            for doc in docs:
                tree.sources.append(Source(path, "patch", doc, {**_target_of(doc), **target}))
    return tree
