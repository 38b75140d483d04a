"""The shape of every Ray cluster (a RayCluster, or a RayJob's rayClusterSpec): a head
that runs no trials, autoscaled GPU worker groups that can be scheduled on GPU nodes."""

from __future__ import annotations

from ..walk import get, ray_cluster_specs, worker_groups

GPU = "nvidia.com/gpu"


def _specs(bundle):
    for res in bundle.of_kind("RayCluster", "RayJob"):
        for path, spec in ray_cluster_specs(res):
            yield res, path, spec


def head_schedules_no_work(bundle):
    """The head starts with num-cpus: "0", so no trial lands beside the GCS and the driver."""
    for res, path, spec in _specs(bundle):
        params = get(spec, ("headGroupSpec", "rayStartParams")) or {}
        if str(params.get("num-cpus", "")).strip() != "0":
            yield bundle.at(res, (*path, "headGroupSpec", "rayStartParams", "num-cpus"),
                            'must be "0": the head must not run trials')


def autoscaling_on(bundle):
    """In-tree autoscaling is on (enableInTreeAutoscaling: true)."""
    for res, path, spec in _specs(bundle):
        if spec.get("enableInTreeAutoscaling") is not True:
            yield bundle.at(res, (*path, "enableInTreeAutoscaling"),
                            "must be true: GPU workers are added and removed by the autoscaler")


def _gpus(quantity) -> float:
    try:
        return float(quantity)
    except (TypeError, ValueError):
        return 0.0


def _tolerates_gpu(pod: dict) -> bool:
    for toleration in pod.get("tolerations") or []:
        if not isinstance(toleration, dict):
            continue
        if toleration.get("operator") == "Exists" and not toleration.get("key"):
            return True
        if toleration.get("key") == GPU and toleration.get("effect") in (None, "", "NoSchedule"):
            return True
    return False


def gpu_worker_groups(bundle):
    """At least one worker group asks for nvidia.com/gpu; each such group tolerates the GPU
    taint and has sane minReplicas <= replicas <= maxReplicas."""
    for res, path, spec in _specs(bundle):
        groups = list(worker_groups(path, spec))
        gpu_groups = 0
        for group_path, group in groups:
            pod = get(group, ("template", "spec")) or {}
            container_path = (*group_path, "template", "spec", "containers", 0, "resources")
            resources = get(pod, ("containers", 0, "resources")) or {}
            limit = _gpus(get(resources, ("limits", GPU)))
            if limit <= 0:
                continue
            gpu_groups += 1
            request = get(resources, ("requests", GPU))
            if request is not None and _gpus(request) != limit:
                yield bundle.at(res, (*container_path, "requests", GPU),
                                f"is {request} but the limit is {limit:g}: GPU requests must equal limits")
            if not _tolerates_gpu(pod):
                yield bundle.at(res, (*group_path, "template", "spec", "tolerations"),
                                f"no toleration for the {GPU} taint: the pods cannot land on GPU nodes")
            yield from _replicas(bundle, res, group_path, group)
        if gpu_groups == 0:
            yield bundle.at(res, (*path, "workerGroupSpecs"),
                            f"no worker group has a {GPU} limit: the sweep would run on CPUs")


def _replicas(bundle, res, group_path, group):
    low, high, now = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
    for key, value in (("minReplicas", low), ("maxReplicas", high)):
        if not isinstance(value, int):
            yield bundle.at(res, (*group_path, key), "must be set for an autoscaled group")
    if isinstance(low, int) and isinstance(high, int):
        if high < 1:
            yield bundle.at(res, (*group_path, "maxReplicas"), "is below 1: the group can never start")
        if low > high:
            yield bundle.at(res, (*group_path, "minReplicas"), f"{low} exceeds maxReplicas {high}")
        if isinstance(now, int) and not low <= now <= high:
            yield bundle.at(res, (*group_path, "replicas"), f"{now} is outside [{low}, {high}]")
