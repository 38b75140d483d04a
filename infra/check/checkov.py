"""checkov's Kubernetes policies over a rendered overlay, findings pointed at the file to edit.

The core objects are scanned with infra/checkov.yaml; the pods KubeRay will create
(projection.py) with infra/checkov-ray-pods.yaml, which skips, besides the same checks,
those that only the Ray pods cannot meet. Each file says why it skips what it skips.
Offline: policies are not downloaded and no update check is made.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import yaml

from . import tools
from .projection import Projected, project
from .violation import Violation
from .walk import RAY_KINDS

CONFIGS = {"objects": "checkov.yaml", "ray-pods": "checkov-ray-pods.yaml"}  # in infra/
_INDEX = re.compile(r"^\[(\d+)\]$")


def config_file(root: Path, which: str) -> Path:
    return root / "infra" / CONFIGS[which]


def _path(key: str) -> tuple:
    """checkov's evaluated key "spec/containers/[0]/image" -> ("spec", "containers", 0, "image")."""
    path = []
    for part in key.split("/"):
        if m := _INDEX.match(part):
            path.append(int(m.group(1)))
        elif part.startswith("[") or not part:
            break  # a wildcard: the path up to it
        else:
            path.append(part)
    return tuple(path)


def start(file: Path, config: Path) -> subprocess.Popen:
    """checkov over FILE with CONFIG, running; finish() reads its findings."""
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    return subprocess.Popen(
        [tools.checkov(), "--config-file", str(config), "--framework", "kubernetes", "--skip-download",
         "--output", "json", "--file", str(file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=file.parent,
    )


def finish(proc: subprocess.Popen) -> list[dict]:
    """The failed checks (checkov's JSON records) of a run start() began."""
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError("checkov ran for more than 10 minutes") from None
    try:
        reports = json.loads(stdout)
    except json.JSONDecodeError:
        tail = (stderr or stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"checkov exited {proc.returncode} without a report: " + " | ".join(tail)) from None
    failed = []
    for report in reports if isinstance(reports, list) else [reports]:
        failed.extend((report.get("results") or {}).get("failed_checks") or [])
    return failed


def _key(obj: dict) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return str(obj.get("kind")), str(meta.get("namespace") or "default"), str(meta.get("name"))


def _lookup(resource: str, objects: dict, projected: dict):
    """The object or projection checkov's resource id KIND.NAMESPACE.NAME names, or None.

    A graph check may name the pod of a workload's template instead: Pod.NAMESPACE.NAME.LABELS.
    """
    kind, namespace, name = (resource.split(".", 2) + ["", "", ""])[:3]
    for table in (projected, objects):
        if (kind, namespace, name) in table:
            return table[(kind, namespace, name)], True
    if kind == "Pod":
        for table in (projected, objects):
            for (k, ns, n), found in table.items():
                if ns == namespace and name.startswith(n + "."):
                    return found, False
    return None, False


def _violations(bundle, finding: dict, objects: dict, projected: dict):
    found, exact = _lookup(str(finding.get("resource", "")), objects, projected)
    keys = (finding.get("check_result") or {}).get("evaluated_keys") if exact else None
    paths = list(dict.fromkeys(_path(k) for k in keys or [""]))  # unique, in order
    message = f"{finding.get('check_name', '')} (checkov)"
    rule = str(finding.get("check_id"))
    for path in paths:
        if isinstance(found, Projected):
            v = bundle.at(found.source, found.origin(path), message)
        elif found is not None:
            v = bundle.at(found, path, message)
        else:
            v = Violation(bundle.rel(bundle.target), str(finding.get("resource", "?")), message)
        yield Violation(v.file, v.field, v.message, rule)


def scan(bundle) -> list[Violation]:
    """checkov's findings for BUNDLE's objects and the Ray pods they describe."""
    if not bundle.objects:
        return []  # nothing rendered: kustomize-renders says why
    objects = {_key(r.obj): r for r in bundle.objects if r.kind not in RAY_KINDS}
    projected = {p.key: p for r in bundle.of_kind(*RAY_KINDS) for p in project(r)}
    # The Ray pods are scanned with the NetworkPolicies, which graph checks match them against.
    policies = [r.obj for r in bundle.of_kind("NetworkPolicy")]
    found: dict[Violation, None] = {}  # the same finding from both scans counts once
    with tempfile.TemporaryDirectory(prefix="raylg-checkov-") as tmp:
        runs = []
        for which, docs in (("objects", [r.obj for r in objects.values()]),
                            ("ray-pods", [p.obj for p in projected.values()])):
            if docs:
                file = Path(tmp) / f"{which}.yaml"
                file.write_text(yaml.safe_dump_all(docs + (policies if which == "ray-pods" else []),
                                                   sort_keys=False))
                runs.append(start(file, config_file(bundle.root, which)))  # both at once
        for proc in runs:
            for finding in finish(proc):
                found.update(dict.fromkeys(_violations(bundle, finding, objects, projected)))
    return list(found)
