"""The pods KubeRay will create, as plain Kubernetes objects a generic checker understands.

checkov knows Pods, Deployments and Jobs but not RayJob or RayCluster, whose pod templates
(head, worker groups, the RayJob's submitter) and autoscaler sidecar are where raylg's
code runs. Each becomes the object the operator makes of it: a Pod per head and worker
group (the autoscaler as a second container of the head pod, from autoscalerOptions) and
a Job for the submitter. Only what the manifests say is projected, never the operator's
defaults, so a missing setting is reported, not filled in. Each projected object keeps
its origin, so that a finding points back at the field of the RayJob or RayCluster to edit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from .bundle import Resource
from .walk import get, ray_cluster_specs, worker_groups

AUTOSCALER_FIELDS = ("image", "imagePullPolicy", "resources", "securityContext", "env", "envFrom",
                     "volumeMounts")


@dataclass
class Projected:
    """One projected object: OBJ, made from the pod template at POD_PATH of SOURCE."""

    obj: dict
    source: Resource
    pod_path: tuple  # where the pod spec is in SOURCE
    prefix: tuple  # where the pod spec is in OBJ: ("spec",) for a Pod, a Job's template spec
    autoscaler: tuple | None = None  # (container index in OBJ, path of autoscalerOptions in SOURCE)

    @property
    def key(self) -> tuple[str, str, str]:
        meta = self.obj["metadata"]
        return self.obj["kind"], meta.get("namespace") or "default", meta["name"]

    def origin(self, path: tuple) -> tuple:
        """The path in SOURCE that PATH of the projected object came from."""
        if tuple(path[:len(self.prefix)]) != self.prefix:
            return self.pod_path
        rest = tuple(path[len(self.prefix):])
        if self.autoscaler and rest[:2] == ("containers", self.autoscaler[0]):
            return (*self.autoscaler[1], *rest[2:])
        return (*self.pod_path, *rest)


def _metadata(source: Resource, template: dict, name: str, labels: dict) -> dict:
    meta = copy.deepcopy(template.get("metadata") or {})
    meta["name"] = name
    if source.namespace:
        meta["namespace"] = source.namespace
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    return meta


def _pod(source, template_path, template, name, labels) -> Projected:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": _metadata(source, template, name, labels),
           "spec": copy.deepcopy(template.get("spec") or {})}
    return Projected(obj, source, (*template_path, "spec"), ("spec",))


def project(source: Resource):
    """The Projected objects of a RayCluster or RayJob (nothing for other kinds)."""
    for spec_path, spec in ray_cluster_specs(source):
        cluster = source.name
        head = get(spec, ("headGroupSpec", "template"))
        if isinstance(head, dict):
            path = (*spec_path, "headGroupSpec", "template")
            pod = _pod(source, path, head, f"{cluster}-head",
                       {"ray.io/cluster": cluster, "ray.io/node-type": "head", "ray.io/is-ray-node": "yes"})
            containers = pod.obj["spec"].setdefault("containers", [])
            if spec.get("enableInTreeAutoscaling") is True and containers:
                options = spec.get("autoscalerOptions") or {}
                sidecar = {"name": "autoscaler", "image": containers[0].get("image")}
                sidecar.update({k: copy.deepcopy(options[k]) for k in AUTOSCALER_FIELDS if k in options})
                containers.append(sidecar)
                pod.autoscaler = (len(containers) - 1, (*spec_path, "autoscalerOptions"))
            yield pod
        for group_path, group in worker_groups(spec_path, spec):
            template = group.get("template")
            if isinstance(template, dict):
                name = str(group.get("groupName", group_path[-1]))
                yield _pod(source, (*group_path, "template"), template, f"{cluster}-worker-{name}",
                           {"ray.io/cluster": cluster, "ray.io/node-type": "worker",
                            "ray.io/group": name, "ray.io/is-ray-node": "yes"})
    if source.kind == "RayJob":
        spec = source.obj.get("spec") or {}
        template = spec.get("submitterPodTemplate")
        if isinstance(template, dict) and spec.get("submissionMode", "K8sJobMode") == "K8sJobMode":
            meta = _metadata(source, template, f"{source.name}-submitter", {})
            obj = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                   "spec": {"template": copy.deepcopy(template)}}
            yield Projected(obj, source, ("spec", "submitterPodTemplate", "spec"), ("spec", "template", "spec"))
