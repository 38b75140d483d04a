"""The rules raylg's checker applies itself, in the order they are reported, and the
generic checks it leaves to maintained tools (DELEGATED).

Each rule is a function of a Bundle (a rendered kustomization) that yields Violations;
its docstring's first paragraph is what `python infra/check rules` prints.
"""

from .auth import ray_token_auth
from .exposure import no_external_exposure, services_cluster_ip
from .files import kustomize_renders, yaml_parses
from .mlflow import mlflow_allowed_hosts, mlflow_auth, mlflow_durable_storage
from .network import network_policies
from .operator import (
    rayjob_cluster_source,
    rayjob_submission_mode,
    rayjob_suspend_needs_shutdown,
    rayjob_ttl_nonnegative,
)
from .raycluster import autoscaling_on, gpu_worker_groups, head_schedules_no_work
from .rayjob import rayjob_entrypoint, rayjob_entrypoint_variables, rayjob_lifecycle, sweep_storage_on_s3
from .references import configmap_references_resolve
from .schemas import kuberay_schema, kubernetes_schema
from .secrets import no_plaintext_secrets, s3_settings_from_secret
from .versions import dockerfile_pins_match_pyproject, ray_version_matches_pin

RULES = (
    # the files
    yaml_parses,
    kustomize_renders,
    # schemas
    kuberay_schema,
    kubernetes_schema,
    # what only the KubeRay operator checks
    rayjob_cluster_source,
    rayjob_suspend_needs_shutdown,
    rayjob_ttl_nonnegative,
    rayjob_submission_mode,
    # the sweep
    rayjob_entrypoint,
    rayjob_entrypoint_variables,
    sweep_storage_on_s3,
    rayjob_lifecycle,
    head_schedules_no_work,
    autoscaling_on,
    gpu_worker_groups,
    # security
    ray_token_auth,
    services_cluster_ip,
    no_external_exposure,
    network_policies,
    no_plaintext_secrets,
    s3_settings_from_secret,
    mlflow_auth,
    mlflow_allowed_hosts,
    mlflow_durable_storage,
    # references between objects
    configmap_references_resolve,
    # versions
    ray_version_matches_pin,
    dockerfile_pins_match_pyproject,
)


# Checks this checker used to implement and now leaves to maintained tools, which
# `python infra/check` runs beside RULES: (what was checked, the tool and its check ids).
DELEGATED = (
    ("container-resources", "checkov CKV_K8S_10, CKV_K8S_11, CKV_K8S_12, CKV_K8S_13",
     "every container, the Ray pods' and the autoscaler's included, has cpu and memory "
     "requests and limits"),
    ("images-pinned (manifests)", "checkov CKV_K8S_14",
     "no container image is untagged or :latest"),
    ("images-pinned (Dockerfiles)", "hadolint DL3006, DL3007",
     "no FROM image in infra/ is untagged or :latest"),
    ("no-external-exposure (pods)", "checkov CKV_K8S_19, CKV_K8S_26",
     "no pod uses the node's network or opens a host port"),
)


def rule_name(rule) -> str:
    return rule.__name__.replace("_", "-")


def rule_summary(rule) -> str:
    """The first paragraph of RULE's docstring, on one line."""
    paragraph = (rule.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())
