"""Nothing is reachable from outside the cluster: ClusterIP services only, no node ports,
no load balancers, no ingress. Users come in with `kubectl port-forward`. (Host networking
and host ports are checkov's CKV_K8S_19 and CKV_K8S_26, on the Ray pods too.)"""

from __future__ import annotations

from ..walk import get, ray_cluster_specs

EXPOSING_KINDS = ("Ingress", "Route", "Gateway", "HTTPRoute", "GRPCRoute", "TCPRoute")


def services_cluster_ip(bundle):
    """Every Service (and every Ray head service) is ClusterIP, without external IPs."""
    for res in bundle.of_kind("Service"):
        kind = get(res.obj, ("spec", "type"), "ClusterIP")
        if kind != "ClusterIP":
            yield bundle.at(res, ("spec", "type"), f"is {kind}: only ClusterIP services are allowed")
        if get(res.obj, ("spec", "externalIPs")):
            yield bundle.at(res, ("spec", "externalIPs"), "exposes the service on external IPs")
    for res in bundle.of_kind("RayCluster", "RayJob"):
        for path, spec in ray_cluster_specs(res):
            head = spec.get("headGroupSpec") or {}
            kind = head.get("serviceType", "ClusterIP")
            if kind != "ClusterIP":
                yield bundle.at(res, (*path, "headGroupSpec", "serviceType"),
                                f"is {kind}: the dashboard and job port must stay ClusterIP")
            kind = get(head, ("headService", "spec", "type"), "ClusterIP")
            if kind != "ClusterIP":
                yield bundle.at(res, (*path, "headGroupSpec", "headService", "spec", "type"),
                                f"is {kind}: the dashboard and job port must stay ClusterIP")
            if head.get("enableIngress") is True:
                yield bundle.at(res, (*path, "headGroupSpec", "enableIngress"),
                                "exposes the dashboard through an Ingress")


def no_external_exposure(bundle):
    """No Ingress, Route or Gateway objects (Gateway API and OpenShift included)."""
    for res in bundle.of_kind(*EXPOSING_KINDS):
        yield bundle.at(res, ("kind",), f"a {res.kind} exposes services outside the cluster")
