"""hadolint over infra/'s Dockerfiles, findings as Violations ("line N INSTRUCTION")."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from . import tools
from .pins import dockerfiles
from .violation import Violation

CONFIG = "hadolint.yaml"  # in infra/


def _instruction(path: Path, line: int) -> str:
    lines = path.read_text().splitlines()
    words = lines[line - 1].split() if 0 < line <= len(lines) else []
    return words[0].upper() if words else ""


def scan(root: Path) -> list[Violation]:
    """hadolint's findings for every Dockerfile under ROOT/infra."""
    files = dockerfiles(root)
    if not files:
        return []
    proc = subprocess.run(
        [tools.hadolint(), "--config", str(root / "infra" / CONFIG), "--format", "json", "--no-color",
         *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        raise RuntimeError(f"hadolint exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}") from None
    found = []
    for f in findings:
        path = Path(f.get("file", ""))
        line = int(f.get("line") or 0)
        where = f"line {line} {_instruction(path, line)}".rstrip()
        rel = str(path.resolve().relative_to(root.resolve())) if path.is_absolute() else str(path)
        found.append(Violation(rel, where, f"{f.get('message', '')} (hadolint, {f.get('level')})",
                               str(f.get("code"))))
    return found
