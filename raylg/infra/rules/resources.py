"""Every container says what it needs and what it may use: requests and limits for CPU
and memory (the autoscaler sidecar included)."""

from __future__ import annotations

from ..walk import containers, get, ray_cluster_specs

NEEDED = (("requests", "cpu"), ("requests", "memory"), ("limits", "cpu"), ("limits", "memory"))


def _missing(bundle, res, path, resources, what):
    if not isinstance(resources, dict) or not resources:
        yield bundle.at(res, path, f"{what} has no resource requests or limits")
        return
    for section, key in NEEDED:
        if get(resources, (section, key)) in (None, ""):
            yield bundle.at(res, (*path, section, key), f"{what} has no {section}.{key}")


def container_resources(bundle):
    """Every container (and the Ray autoscaler) has requests and limits for cpu and memory."""
    for res in bundle.objects:
        for path, container, _role in containers(res):
            what = f"container {container.get('name', '?')!r}"
            yield from _missing(bundle, res, (*path, "resources"), container.get("resources"), what)
        for path, spec in ray_cluster_specs(res):
            if spec.get("enableInTreeAutoscaling") is True:
                yield from _missing(bundle, res, (*path, "autoscalerOptions", "resources"),
                                    get(spec, ("autoscalerOptions", "resources")), "the autoscaler")
