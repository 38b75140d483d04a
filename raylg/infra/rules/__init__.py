"""The rules `python -m raylg.infra check` applies, in the order they are reported.

Each rule is a function of a Bundle (a rendered kustomization) that yields Violations;
its docstring's first line is what `python -m raylg.infra rules` prints.
"""

from .auth import ray_token_auth
from .exposure import no_external_exposure, services_cluster_ip
from .files import kustomize_renders, yaml_parses
from .images import images_pinned
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
from .resources import container_resources
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
    # hygiene
    container_resources,
    images_pinned,
    configmap_references_resolve,
    # versions
    ray_version_matches_pin,
    dockerfile_pins_match_pyproject,
)


def rule_name(rule) -> str:
    return rule.__name__.replace("_", "-")


def rule_summary(rule) -> str:
    """The first paragraph of RULE's docstring, on one line."""
    paragraph = (rule.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())
