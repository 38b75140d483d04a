"""Version pins: what pyproject.toml allows, and what the Dockerfiles install."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name


@dataclass
class Pins:
    """pyproject.toml's [project] dependencies and requires-python."""

    file: Path
    requirements: dict[str, SpecifierSet] = field(default_factory=dict)
    requires_python: SpecifierSet = field(default_factory=SpecifierSet)

    def allows(self, package: str, version: str) -> bool | None:
        """True/False whether VERSION is inside the pin; None if PACKAGE is not a dependency."""
        spec = self.requirements.get(canonicalize_name(package))
        return None if spec is None else spec.contains(version, prereleases=True)

    def spec(self, package: str) -> str:
        return str(self.requirements.get(canonicalize_name(package), ""))


def read_pins(root: Path) -> Pins:
    path = root / "pyproject.toml"
    project = tomllib.loads(path.read_text()).get("project", {})
    pins = Pins(file=path, requires_python=SpecifierSet(project.get("requires-python", "")))
    for line in project.get("dependencies", []):
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        pins.requirements[canonicalize_name(req.name)] = req.specifier
    return pins


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults, last one wins
    froms: list[tuple[int, str]] = field(default_factory=list)  # (line, image) after ${ARG}s
    pip_pins: list[tuple[int, str, str]] = field(default_factory=list)  # (line, package, version)
    pip_extras: dict[str, set[str]] = field(default_factory=dict)  # package -> extras installed


_ARG = re.compile(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", re.I)
_FROM = re.compile(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", re.I)
_PIN = re.compile(r"""(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([^\]]*)\])?==([A-Za-z0-9.+!*_-]+)""")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _logical_lines(text: str):
    """(first line number, instruction) with backslash continuations joined, comments dropped."""
    start, parts = None, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not parts and (not line or line.startswith("#")):
            continue
        if start is None:
            start = number
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield start, " ".join(parts)
        start, parts = None, []
    if parts:
        yield start, " ".join(parts)


def parse_dockerfile(path: Path) -> Dockerfile:
    result = Dockerfile(path=path)

    def expand(text: str) -> str:
        return _VAR.sub(lambda m: result.args.get(m.group(1) or m.group(2), m.group(0)), text)

    for number, line in _logical_lines(path.read_text()):
        if m := _ARG.match(line):
            if m.group(2) is not None:
                result.args[m.group(1)] = m.group(2).strip("\"'")
        elif m := _FROM.match(line):
            result.froms.append((number, expand(m.group(1))))
        elif line.upper().startswith("RUN ") and "pip" in line:
            for pm in _PIN.finditer(expand(line)):
                result.pip_pins.append((number, pm.group(1), pm.group(3)))
                extras = {e.strip() for e in (pm.group(2) or "").split(",") if e.strip()}
                result.pip_extras.setdefault(canonicalize_name(pm.group(1)), set()).update(extras)
    return result


def dockerfiles(root: Path) -> list[Path]:
    infra = root / "infra"
    if not infra.is_dir():
        return []
    return sorted(p for p in infra.rglob("*") if p.is_file() and (p.name == "Dockerfile" or p.suffix == ".Dockerfile"))
