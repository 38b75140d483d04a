"""Rules the KubeRay operator enforces at reconcile time but its CRD schema does not
(listed in shared/kuberay-crds/README.md). Broken, the RayJob is accepted by the API
server and then fails inside the operator."""

from __future__ import annotations

SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")


def _rayjobs(bundle):
    for res in bundle.of_kind("RayJob"):
        spec = res.obj.get("spec")
        if isinstance(spec, dict):
            yield res, spec


def rayjob_cluster_source(bundle):
    """A RayJob has exactly one of rayClusterSpec and clusterSelector."""
    for res, spec in _rayjobs(bundle):
        has_spec = bool(spec.get("rayClusterSpec"))
        has_selector = bool(spec.get("clusterSelector"))
        if has_spec and has_selector:
            yield bundle.at(res, ("spec", "clusterSelector"),
                            "set together with rayClusterSpec: the operator rejects the RayJob")
        elif not (has_spec or has_selector):
            yield bundle.at(res, ("spec", "rayClusterSpec"),
                            "missing: a RayJob needs rayClusterSpec or clusterSelector")


def rayjob_suspend_needs_shutdown(bundle):
    """A suspended RayJob has shutdownAfterJobFinishes: true."""
    for res, spec in _rayjobs(bundle):
        if spec.get("suspend") is True and spec.get("shutdownAfterJobFinishes") is not True:
            yield bundle.at(res, ("spec", "suspend"),
                            "suspend: true requires shutdownAfterJobFinishes: true")


def rayjob_ttl_nonnegative(bundle):
    """ttlSecondsAfterFinished is not negative."""
    for res, spec in _rayjobs(bundle):
        ttl = spec.get("ttlSecondsAfterFinished")
        if isinstance(ttl, int) and ttl < 0:
            yield bundle.at(res, ("spec", "ttlSecondsAfterFinished"), f"is {ttl}; it must be >= 0")


def rayjob_submission_mode(bundle):
    """submissionMode is one the operator knows."""
    for res, spec in _rayjobs(bundle):
        mode = spec.get("submissionMode")
        if mode is not None and mode not in SUBMISSION_MODES:
            yield bundle.at(res, ("spec", "submissionMode"),
                            f"is {mode!r}; it must be one of {', '.join(SUBMISSION_MODES)}")
