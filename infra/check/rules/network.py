"""Only pods of the namespace reach the Ray head's dashboard / job API / client port and
MLflow. A namespace selector is accepted once: naming the KubeRay operator's namespace
(exactly one, by kubernetes.io/metadata.name) for the dashboard port it polls."""

from __future__ import annotations

from ..walk import get, mlflow_servers, pod_labels, pod_specs, selects

HEAD_PORTS = {"dashboard": 8265, "client": 10001}
OPERATOR_PORT = 8265


def _protected(bundle):
    """(res, pod path, labels, {port number: port name}, what) for the head and MLflow pods."""
    for res in bundle.of_kind("RayCluster", "RayJob"):
        for path, pod, role in pod_specs(res):
            if role != "head":
                continue
            labels = {**pod_labels(res, path), "ray.io/node-type": "head", "ray.io/is-ray-node": "yes"}
            ports = {v: k for k, v in HEAD_PORTS.items()}
            for port in get(pod, ("containers", 0, "ports")) or []:
                if port.get("name") in HEAD_PORTS:
                    ports.pop(HEAD_PORTS[port["name"]], None)
                    ports[port.get("containerPort")] = port["name"]
            yield res, path, labels, ports, "the Ray head"
    for res in bundle.of_kind("Deployment", "StatefulSet"):
        for cpath, container, _argv in mlflow_servers(res):
            pod_path = cpath[:-2]
            ports = {p.get("containerPort"): p.get("name") for p in container.get("ports") or []}
            yield res, pod_path, pod_labels(res, pod_path), ports or {5000: "http"}, "MLflow"


def _admits(rule_ports, number, name) -> bool:
    if not rule_ports:
        return True
    for port in rule_ports:
        value = port.get("port") if isinstance(port, dict) else None
        if value is None or value == name:
            return True
        if isinstance(value, int) and value <= number <= (port.get("endPort") or value):
            return True
    return False


def _peer_problem(peer, ports: set, is_head: bool, namespace: str) -> str | None:
    if not isinstance(peer, dict) or "ipBlock" in peer:
        return "admits an IP block (anything on the network)"
    ns_selector = peer.get("namespaceSelector")
    if ns_selector is None:
        return None  # podSelector alone: pods of this namespace
    names = (ns_selector.get("matchLabels") or {}).get("kubernetes.io/metadata.name")
    if names == namespace and not ns_selector.get("matchExpressions"):
        return None
    exact = set(ns_selector) == {"matchLabels"} and set(ns_selector["matchLabels"]) == {
        "kubernetes.io/metadata.name"}
    if is_head and exact and ports <= {OPERATOR_PORT}:
        return None  # the KubeRay operator's namespace, dashboard port only
    return "admits pods of other namespaces"


def network_policies(bundle):
    """NetworkPolicies select the Ray head and MLflow pods, and admit their dashboard, job,
    client and MLflow ports only from pods of the same namespace."""
    policies = bundle.of_kind("NetworkPolicy")
    for res, pod_path, labels, ports, what in _protected(bundle):
        namespace = res.namespace
        selecting = [
            p for p in policies
            if p.namespace == namespace and selects(get(p.obj, ("spec", "podSelector")), labels)
            and "Ingress" in (get(p.obj, ("spec", "policyTypes")) or ["Ingress"])
        ]
        if not selecting:
            yield bundle.at(res, (*pod_path[:-1], "metadata", "labels"),
                            f"no NetworkPolicy selects {what}: every pod in the cluster can reach it")
            continue
        for policy in selecting:
            for i, rule in enumerate(get(policy.obj, ("spec", "ingress")) or []):
                admitted = {n for n, name in ports.items() if _admits(rule.get("ports"), n, name)}
                if not admitted:
                    continue
                peers = rule.get("from")
                if not peers:
                    yield bundle.at(policy, ("spec", "ingress", i),
                                    f"admits anyone to {what} on {sorted(admitted)} (no `from`)")
                    continue
                for j, peer in enumerate(peers):
                    problem = _peer_problem(peer, admitted, what == "the Ray head", namespace)
                    if problem:
                        yield bundle.at(policy, ("spec", "ingress", i, "from", j),
                                        f"{problem} to {what} on {sorted(admitted)}")
