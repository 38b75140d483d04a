"""A rendered kustomization plus what is needed to point a violation at a file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .kustomize import KubectlMissing, Tree, render, walk
from .violation import Violation, format_path


@dataclass
class Resource:
    """One rendered Kubernetes object."""

    obj: dict

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str((self.obj.get("metadata") or {}).get("namespace", "") or "")

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


def find_root(start: Path) -> Path:
    """The repository root: the nearest directory at or above START with a pyproject.toml."""
    start = start.resolve()
    for candidate in [start, *start.parents]:
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return start


def _parse_pointer(pointer: str) -> list:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    return [int(p) if p.isdigit() else p for p in parts]


def _doc_depth(doc, path) -> int:
    """How many leading components of PATH exist in DOC."""
    depth, node = 0, doc
    for part in path:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            node = node[part]
        else:
            break
        depth += 1
    return depth


def _op_depth(op_path, path) -> int:
    """Depth of a JSON-patch operation at OP_PATH for a violation at PATH (0: unrelated)."""
    for a, b in zip(op_path, path):
        if a != b and a != "-":
            return 0
    return min(len(op_path), len(path))


@dataclass
class Bundle:
    root: Path
    target: Path
    tree: Tree
    objects: list[Resource] = field(default_factory=list)
    render_error: str | None = None
    options: dict = field(default_factory=dict)  # crds, kubernetes_version

    # ---- finding objects -------------------------------------------------------------
    def of_kind(self, *kinds: str) -> list[Resource]:
        return [r for r in self.objects if r.kind in kinds]

    def configmap_data(self, name: str) -> dict | None:
        for res in self.of_kind("ConfigMap"):
            if res.name == name:
                return res.obj.get("data") or {}
        return None

    # ---- locating ----------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    def where(self, res: Resource, path=()) -> str:
        """The file that sets PATH of RES: the deepest (then latest) matching source."""
        best, best_depth = None, -1
        for src in self.tree.sources:
            if src.target.get("kind") not in (None, res.kind):
                continue
            if src.target.get("name") not in (None, res.name):
                continue
            if src.kind == "jsonpatch":
                depth = max(
                    (_op_depth(_parse_pointer(str(op.get("path", ""))), path)
                     for op in src.doc if isinstance(op, dict)),
                    default=0,
                )
                depth = depth or -1
            else:
                depth = _doc_depth(src.doc, path)
                if src.kind == "patch" and depth < len(path):
                    depth = -1  # a patch counts only if it sets the field itself
            if depth >= best_depth and depth >= 0:
                best, best_depth = src, depth
        if best is not None:
            return self.rel(best.file)
        if res.kind in ("ConfigMap", "Secret") and res.name in self.tree.generated:
            return self.rel(self.tree.generated[res.name])
        kfile = self.tree.kustomizations[0] if self.tree.kustomizations else self.target
        return self.rel(kfile)

    def at(self, res: Resource, path, message: str) -> Violation:
        """A violation at PATH (a tuple of keys and indices) of RES."""
        field_ = f"{res.ref} {format_path(path)}".rstrip()
        return Violation(self.where(res, tuple(path)), field_, message)


def load(target: Path, **options) -> Bundle:
    """Render TARGET (a kustomization directory) and index its sources.

    A render failure is kept in ``render_error`` (the rules that need objects then see
    none); a missing kubectl raises KubectlMissing.
    """
    target = Path(target).resolve()
    bundle = Bundle(root=find_root(target), target=target, tree=walk(target), options=options)
    try:
        bundle.objects = [Resource(o) for o in render(target) if isinstance(o, dict)]
    except KubectlMissing:
        raise
    except Exception as exc:  # kubectl's own message says what is wrong
        bundle.render_error = str(exc)
    return bundle
