"""What every rule yields: one problem, located by file and field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    """One broken rule.

    file: the file to edit, relative to the repository root (for a rendered object, the
        resource or patch file that sets the field, or the file that defines the object).
    field: where in that file, e.g. ``RayJob/raylg-sweep spec.entrypoint``, or
        ``line 12`` for a Dockerfile.
    message: what is wrong, in a sentence.
    rule: the rule's name (filled in by the runner).
    """

    file: str
    field: str
    message: str
    rule: str = ""

    def __str__(self) -> str:
        tag = f" [{self.rule}]" if self.rule else ""
        return f"{self.file}: {self.field}: {self.message}{tag}"


def format_path(path) -> str:
    """("spec", "containers", 0, "image") -> "spec.containers[0].image"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
