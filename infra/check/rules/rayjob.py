"""The sweep RayJob: it runs jobs/sweep.py, writes to S3, and cleans up after itself."""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath

from ..walk import env_value, get

_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_SHELL_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def _rayjobs(bundle):
    for res in bundle.of_kind("RayJob"):
        if isinstance(res.obj.get("spec"), dict):
            yield res, res.obj["spec"]


def rayjob_lifecycle(bundle):
    """The RayJob deletes its cluster when done and cannot run forever or retry forever."""
    for res, spec in _rayjobs(bundle):
        if spec.get("clusterSelector"):
            continue  # runs on a cluster it does not own
        if spec.get("shutdownAfterJobFinishes") is not True:
            yield bundle.at(res, ("spec", "shutdownAfterJobFinishes"),
                            "must be true: otherwise the GPU cluster outlives the sweep")
        if not isinstance(spec.get("ttlSecondsAfterFinished"), int):
            yield bundle.at(res, ("spec", "ttlSecondsAfterFinished"),
                            "must be set: how long the finished cluster is kept")
        deadline = spec.get("activeDeadlineSeconds")
        if not isinstance(deadline, int) or deadline <= 0:
            yield bundle.at(res, ("spec", "activeDeadlineSeconds"),
                            "must be a positive number of seconds: a stuck sweep holds GPUs forever")
        if not isinstance(spec.get("backoffLimit"), int):
            yield bundle.at(res, ("spec", "backoffLimit"), "must be set (retries of a failed RayJob)")


def _tokens(entrypoint: str) -> list[str]:
    try:
        return shlex.split(entrypoint)
    except ValueError:
        return entrypoint.split()


def _script(tokens: list[str]) -> tuple[int, str] | None:
    """(index, script) run by the first `python` in TOKENS."""
    for i, token in enumerate(tokens):
        if _PYTHON.match(PurePosixPath(token).name):
            rest = [t for t in tokens[i + 1:] if not t.startswith("-")]
            return (i, rest[0]) if rest else None
    return None


def _flag(tokens: list[str], name: str) -> str | None:
    for i, token in enumerate(tokens):
        if token == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def rayjob_entrypoint(bundle):
    """The RayJob entrypoint runs `python .../jobs/sweep.py --config FILE`."""
    for res, spec in _rayjobs(bundle):
        entrypoint = spec.get("entrypoint")
        path = ("spec", "entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            yield bundle.at(res, path, "is empty: the RayJob must run jobs/sweep.py")
            continue
        tokens = _tokens(entrypoint)
        found = _script(tokens)
        if found is None or not found[1].endswith("jobs/sweep.py"):
            ran = found[1] if found else entrypoint.split()[0]
            yield bundle.at(res, path, f"runs {ran!r}, not `python jobs/sweep.py`")
        config = _flag(tokens, "--config")
        if not config or config.startswith("-"):
            yield bundle.at(res, path, "has no --config FILE for jobs/sweep.py")


def _submitter_env(bundle, spec):
    """The container whose shell expands the entrypoint's $VARS, or None if unknown."""
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode == "K8sJobMode":
        return get(spec, ("submitterPodTemplate", "spec", "containers", 0)) or {}
    if mode == "HTTPMode":
        return get(spec, ("rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0)) or {}
    return None


def rayjob_entrypoint_variables(bundle):
    """Every $VAR in the entrypoint is set where the entrypoint's shell expands it."""
    for res, spec in _rayjobs(bundle):
        entrypoint = spec.get("entrypoint")
        container = _submitter_env(bundle, spec)
        if not isinstance(entrypoint, str) or container is None:
            continue
        for name in sorted(set(_SHELL_VAR.findall(entrypoint))):
            if env_value(bundle, container, name) is None:
                yield bundle.at(res, ("spec", "entrypoint"),
                                f"${name} is not set in the submitter (its env or a ConfigMap): "
                                "it expands to an empty string")


def _expanded(bundle, spec) -> list[str]:
    entrypoint = spec.get("entrypoint") or ""
    container = _submitter_env(bundle, spec) or {}

    def value(match):
        found = env_value(bundle, container, match.group(1))
        return found if found is not None else match.group(0)

    return _tokens(_SHELL_VAR.sub(value, entrypoint))


def sweep_storage_on_s3(bundle):
    """The sweep stores checkpoints and results on S3 (--storage s3://...), not a pod's disk."""
    for res, spec in _rayjobs(bundle):
        if not isinstance(spec.get("entrypoint"), str):
            continue
        storage = _flag(_expanded(bundle, spec), "--storage")
        if storage is None:
            yield bundle.at(res, ("spec", "entrypoint"),
                            "has no --storage s3://BUCKET/PREFIX: checkpoints would die with the cluster")
        elif "$" in storage:
            continue  # an unresolved variable: rayjob-entrypoint-variables reports it
        elif not storage.startswith("s3://"):
            yield bundle.at(res, ("spec", "entrypoint"),
                            f"--storage is {storage!r}, not an s3:// URI")
