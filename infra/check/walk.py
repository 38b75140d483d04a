"""Where the pods, containers and Ray cluster specs are inside each kind of object."""

from __future__ import annotations

from .bundle import Bundle, Resource

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
RAY_KINDS = ("RayCluster", "RayJob")


def get(obj, path, default=None):
    node = obj
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return default
        elif not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def ray_cluster_specs(res: Resource):
    """(path, spec) of every RayClusterSpec in RES: a RayCluster's spec, a RayJob's rayClusterSpec."""
    if res.kind == "RayCluster" and isinstance(res.obj.get("spec"), dict):
        yield ("spec",), res.obj["spec"]
    elif res.kind == "RayJob":
        spec = get(res.obj, ("spec", "rayClusterSpec"))
        if isinstance(spec, dict):
            yield ("spec", "rayClusterSpec"), spec


def worker_groups(spec_path, spec):
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        if isinstance(group, dict):
            yield (*spec_path, "workerGroupSpecs", i), group


def pod_specs(res: Resource):
    """(path, pod spec, role) of every pod template in RES; role is head/worker/submitter/pod."""
    if res.kind in WORKLOAD_KINDS:
        spec = get(res.obj, ("spec", "template", "spec"))
        if isinstance(spec, dict):
            yield ("spec", "template", "spec"), spec, "pod"
    if res.kind == "Pod" and isinstance(res.obj.get("spec"), dict):
        yield ("spec",), res.obj["spec"], "pod"
    for spec_path, spec in ray_cluster_specs(res):
        head = get(spec, ("headGroupSpec", "template", "spec"))
        if isinstance(head, dict):
            yield (*spec_path, "headGroupSpec", "template", "spec"), head, "head"
        for group_path, group in worker_groups(spec_path, spec):
            pod = get(group, ("template", "spec"))
            if isinstance(pod, dict):
                yield (*group_path, "template", "spec"), pod, "worker"
    if res.kind == "RayJob":
        pod = get(res.obj, ("spec", "submitterPodTemplate", "spec"))
        if isinstance(pod, dict):
            yield ("spec", "submitterPodTemplate", "spec"), pod, "submitter"


def containers(res: Resource):
    """(path, container, role) of every container and init container in RES."""
    for pod_path, pod, role in pod_specs(res):
        for key in ("initContainers", "containers"):
            for i, container in enumerate(pod.get(key) or []):
                if isinstance(container, dict):
                    yield (*pod_path, key, i), container, role


def env_value(bundle: Bundle, container: dict, name: str) -> str | None:
    """The value NAME has in CONTAINER: a literal, a ConfigMap key, or envFrom a ConfigMap.

    None if it is unset or comes from somewhere this offline check cannot read (a Secret).
    """
    for env in container.get("env") or []:
        if not isinstance(env, dict) or env.get("name") != name:
            continue
        if "value" in env:
            return str(env["value"])
        ref = get(env, ("valueFrom", "configMapKeyRef"))
        if isinstance(ref, dict):
            data = bundle.configmap_data(str(ref.get("name"))) or {}
            value = data.get(ref.get("key"))
            return None if value is None else str(value)
        return None
    for source in container.get("envFrom") or []:
        ref = get(source, ("configMapRef", "name"))
        data = bundle.configmap_data(str(ref)) if ref else None
        if data and name in data:
            return str(data[name])
    return None


def env_names(container: dict) -> set[str]:
    return {e.get("name") for e in container.get("env") or [] if isinstance(e, dict)}


def iter_nodes(node, path=()):
    """(path, node) for NODE and everything inside it, depth first."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from iter_nodes(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_nodes(value, (*path, i))


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a LabelSelector selects LABELS; {} selects everything.

    matchExpressions are not evaluated: a selector that uses them never matches here, so
    a rule relying on it reports the pods as unprotected rather than guessing.
    """
    selector = selector or {}
    if selector.get("matchExpressions"):
        return False
    return map_selects(selector.get("matchLabels"), labels)


def map_selects(selector: dict | None, labels: dict) -> bool:
    """Whether a plain label map (a Service's selector, matchLabels) selects LABELS."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def mlflow_servers(res: Resource):
    """(path, container, argv) of every `mlflow server` container in RES."""
    for path, container, role in containers(res):
        argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        names = [a.rsplit("/", 1)[-1] for a in argv]
        if "mlflow" in names and names.index("mlflow") + 1 < len(names) \
                and names[names.index("mlflow") + 1] == "server":
            yield path, container, argv
        elif not container.get("command") and names[:1] == ["server"] \
                and "mlflow" in str(container.get("image", "")):
            yield path, container, argv


def pod_labels(res: Resource, pod_path: tuple) -> dict:
    """The labels of the pods made from the template at POD_PATH (…/template/spec)."""
    meta = get(res.obj, (*pod_path[:-1], "metadata", "labels")) or {}
    return dict(meta)
