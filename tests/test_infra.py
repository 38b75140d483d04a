"""infra/ validated offline by infra/check (a development tool beside the manifests, not part
of the raylg package): YAML parses, overlays render, schemas hold, checkov and hadolint pass,
and every rule catches a deliberately broken copy, naming the file and field to fix."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds"


def _import_checker():
    """infra/check as the package "check", without putting infra/ on sys.path."""
    if "check" not in sys.modules:
        folder = ROOT / "infra" / "check"
        spec = importlib.util.spec_from_file_location("check", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["check"] = module
        spec.loader.exec_module(module)
    return sys.modules["check"]


_import_checker()
from check import RULES, check, checkov, hadolint, overlays, tools  # noqa: E402
from check.bundle import load  # noqa: E402
from check.kustomize import kubectl  # noqa: E402
from check.pins import parse_dockerfile  # noqa: E402
from check.rules import DELEGATED, rule_name  # noqa: E402
from check.rules.schemas import kuberay_schema  # noqa: E402

OVERLAYS = [p.name for p in overlays(ROOT)]


def _installed(find) -> bool:
    try:
        find()
        return True
    except tools.ToolMissing:
        return False


requires_kubectl = pytest.mark.skipif(
    not (os.environ.get("KUBECTL") or shutil.which("kubectl")),
    reason="kubectl is not installed (Debian package `kubectl`); overlays cannot be rendered",
)
requires_crds = pytest.mark.skipif(
    not CRDS.is_dir(), reason=f"KubeRay CRDs not found at {CRDS} (shared/kuberay-crds beside the repo)"
)
# CI installs both (.ci/run), so there a missing one fails the tests instead of skipping them.
requires_checkov = pytest.mark.skipif(
    not os.environ.get("CI") and not _installed(tools.checkov),
    reason="checkov is not installed (infra/README.md: its own venv, or $CHECKOV)",
)
requires_hadolint = pytest.mark.skipif(
    not os.environ.get("CI") and not _installed(tools.hadolint),
    reason="hadolint is not installed (pip install -e '.[test]')",
)


def run_check(target: Path):
    """check() with the shared CRDs; without them, every rule but the CRD schema one."""
    if CRDS.is_dir():
        return check(target, crds=CRDS)
    return check(target, rules=tuple(r for r in RULES if r is not kuberay_schema))


def run_checkov(target: Path):
    """checkov's findings for the rendered TARGET, Ray pods included."""
    return checkov.scan(load(target))


def run_tool(rule: str, root: Path, target: Path):
    """The findings of whichever checker owns RULE: checkov (CKV...), hadolint (DL...) or raylg's."""
    if rule.startswith("CKV"):
        return run_checkov(target)
    if rule.startswith("DL"):
        return hadolint.scan(root)
    return run_check(target)


# ---- the real files ----------------------------------------------------------------------


def test_every_yaml_file_in_infra_parses():
    files = sorted((ROOT / "infra").rglob("*.y*ml"))
    assert files
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_there_are_single_gpu_multi_node_and_interactive_overlays():
    assert {"single-gpu", "multi-node", "interactive"} <= set(OVERLAYS)


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_passes_every_rule(overlay):
    violations = run_check(ROOT / "infra" / "overlays" / overlay)
    assert violations == [], "\n".join(map(str, violations))


@requires_kubectl
@requires_checkov
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_checkov(overlay):
    violations = run_checkov(ROOT / "infra" / "overlays" / overlay)
    assert violations == [], "\n".join(map(str, violations))


@requires_hadolint
def test_dockerfiles_pass_hadolint():
    found = hadolint.scan(ROOT)
    assert found == [], "\n".join(map(str, found))


def test_the_checker_is_not_part_of_the_raylg_package():
    assert importlib.util.find_spec("raylg.infra") is None
    assert not (ROOT / "raylg" / "infra").exists()


def test_checkov_skips_are_written_down():
    """Each skipped check is named in a comment of its config file (the reason), and the Ray
    pods skip everything the other objects skip."""
    skips = {}
    for which in checkov.CONFIGS:
        path = checkov.config_file(ROOT, which)
        text = path.read_text()
        skips[which] = set(yaml.safe_load(text)["skip-check"])
        lines = text.splitlines()
        comments = " ".join(line.split("#", 1)[1] for line in lines if "#" in line)
        for check_id in skips[which]:
            inline = [line for line in lines if re.match(rf"\s*- {check_id}\s+#\s*\S", line)]
            assert inline or re.search(rf"\b{check_id}\b", comments), f"{path.name}: no reason for {check_id}"
    assert skips["objects"] <= skips["ray-pods"]


@requires_kubectl
def test_overlays_render_what_the_issue_asks_for():
    kinds = {}
    for overlay in OVERLAYS:
        out = subprocess.run([kubectl(), "kustomize", str(ROOT / "infra" / "overlays" / overlay)],
                             capture_output=True, text=True, check=True).stdout
        kinds[overlay] = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}
    for overlay in ("single-gpu", "multi-node"):
        assert ("RayJob", "raylg-sweep") in kinds[overlay]
    assert ("RayCluster", "raylg") in kinds["interactive"]
    for found in kinds.values():
        assert {("Deployment", "mlflow"), ("Service", "mlflow"), ("StatefulSet", "mlflow-postgres"),
                ("NetworkPolicy", "default-deny-ingress")} <= found
        assert not any(kind == "Secret" for kind, _ in found)


def test_dockerfile_parsing_expands_args():
    parsed = parse_dockerfile(ROOT / "infra" / "Dockerfile")
    (_line, image), = parsed.froms
    assert image.startswith("rayproject/ray:") and image.endswith("-gpu")
    assert {p for _l, p, _v in parsed.pip_pins} >= {"torch", "torchvision"}


# ---- broken copies -----------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path):
    """A scratch copy of infra/ and pyproject.toml to break."""
    shutil.copytree(ROOT / "infra", tmp_path / "infra")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def edit(root: Path, rel: str, change, kind: str | None = None, name: str | None = None):
    """Apply CHANGE to the YAML document(s) of ROOT/REL matching KIND/NAME, and write back."""
    path = root / rel
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if isinstance(doc, dict) and kind in (None, doc.get("kind")) \
                and name in (None, doc.get("metadata", {}).get("name")):
            change(doc)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def replace_text(root: Path, rel: str, old: str, new: str):
    path = root / rel
    text = path.read_text()
    assert old in text, f"{old!r} not in {rel}"
    path.write_text(text.replace(old, new))


RAYJOB = "infra/base/sweep/rayjob.yaml"
MLFLOW = "infra/base/common/mlflow.yaml"
POSTGRES = "infra/base/common/postgres.yaml"


def spec(doc):
    return doc["spec"]


def cluster(doc):
    return doc["spec"]["rayClusterSpec"]


def head(doc):
    return cluster(doc)["headGroupSpec"]


def head_container(doc):
    return head(doc)["template"]["spec"]["containers"][0]


def worker(doc):
    return cluster(doc)["workerGroupSpecs"][0]


def mlflow_container(doc):
    return doc["spec"]["template"]["spec"]["containers"][0]


def set_env(container, name, **entry):
    container["env"] = [e for e in container.get("env", []) if e["name"] != name] + [{"name": name, **entry}]


def replace_arg(container, prefix, new):
    args = [a for a in container["args"] if not a.startswith(prefix)]
    container["args"] = args + ([new] if new else [])


# (rule, file to break, how, file the violation must name, text its field must contain)
CASES = [
    ("yaml-parses", "infra/base/common/networkpolicies.yaml",
     lambda r: (r / "infra/base/common/networkpolicies.yaml").open("a").write("\n---\nkind: [oops\n"),
     "networkpolicies.yaml", "line"),
    ("kustomize-renders", "infra/base/sweep/kustomization.yaml",
     lambda r: replace_text(r, "infra/base/sweep/kustomization.yaml", "  - rayjob.yaml", "  - rayjob.yaml\n  - gone.yaml"),
     "kustomization.yaml", "kustomization"),
    ("kuberay-schema", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: spec(d).update(shutdownAfterJobFinish=True)),
     RAYJOB, "spec.shutdownAfterJobFinish"),
    ("kubernetes-schema", MLFLOW,
     lambda r: edit(r, MLFLOW, lambda d: spec(d).update(replicas="one"), "Deployment"),
     MLFLOW, "Deployment/mlflow spec.replicas"),
    ("rayjob-cluster-source", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: spec(d).update(clusterSelector={"ray.io/cluster": "x"})),
     RAYJOB, "spec.clusterSelector"),
    ("rayjob-suspend-needs-shutdown", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: spec(d).update(suspend=True, shutdownAfterJobFinishes=False)),
     RAYJOB, "spec.suspend"),
    ("rayjob-ttl-nonnegative", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: spec(d).update(ttlSecondsAfterFinished=-5)),
     RAYJOB, "spec.ttlSecondsAfterFinished"),
    ("rayjob-submission-mode", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: spec(d).update(submissionMode="BatchMode")),
     RAYJOB, "spec.submissionMode"),
    ("rayjob-entrypoint", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: spec(d).update(entrypoint="python jobs/train.py --storage s3://b/p")),
     RAYJOB, "spec.entrypoint"),
    ("rayjob-entrypoint-variables", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: spec(d).update(entrypoint=spec(d)["entrypoint"] + ' --tag "$SWEEP_TAG"')),
     RAYJOB, "spec.entrypoint"),
    ("sweep-storage-on-s3", "infra/base/common/settings.env",
     lambda r: replace_text(r, "infra/base/common/settings.env", "RAYLG_STORAGE=s3://raylg-runs/sweeps",
                            "RAYLG_STORAGE=/tmp/ray_results"),
     RAYJOB, "spec.entrypoint"),
    ("rayjob-lifecycle", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: spec(d).pop("activeDeadlineSeconds")),
     RAYJOB, "spec.activeDeadlineSeconds"),
    ("head-schedules-no-work", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: head(d)["rayStartParams"].update({"num-cpus": "4"})),
     RAYJOB, "headGroupSpec.rayStartParams.num-cpus"),
    ("autoscaling-on", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: cluster(d).update(enableInTreeAutoscaling=False)),
     RAYJOB, "spec.rayClusterSpec.enableInTreeAutoscaling"),
    ("gpu-worker-groups", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: worker(d)["template"]["spec"].pop("tolerations")),
     RAYJOB, "workerGroupSpecs[0].template.spec.tolerations"),
    ("ray-token-auth", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: cluster(d)["authOptions"].update(mode="disabled")),
     RAYJOB, "spec.rayClusterSpec.authOptions.mode"),
    ("services-cluster-ip", MLFLOW,
     lambda r: edit(r, MLFLOW, lambda d: spec(d).update(type="LoadBalancer"), "Service"),
     MLFLOW, "Service/mlflow spec.type"),
    ("no-external-exposure", MLFLOW,
     lambda r: (r / MLFLOW).open("a").write(
         "\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: mlflow}\n"
         "spec:\n  defaultBackend: {service: {name: mlflow, port: {number: 5000}}}\n"),
     MLFLOW, "Ingress/mlflow kind"),
    # no-external-exposure (pods): checkov CKV_K8S_19, CKV_K8S_26
    ("CKV_K8S_26", MLFLOW,
     lambda r: edit(r, MLFLOW, lambda d: mlflow_container(d)["ports"][0].update(hostPort=5000), "Deployment"),
     MLFLOW, "containers[0].ports[0].hostPort"),
    ("network-policies", "infra/base/common/networkpolicies.yaml",
     lambda r: edit(r, "infra/base/common/networkpolicies.yaml",
                    lambda d: spec(d)["ingress"][0].update({"from": [{"namespaceSelector": {}}]}),
                    "NetworkPolicy", "ray-head-api"),
     "networkpolicies.yaml", "NetworkPolicy/ray-head-api spec.ingress[0].from[0]"),
    ("no-plaintext-secrets", MLFLOW,
     lambda r: edit(r, MLFLOW, lambda d: set_env(mlflow_container(d), "PGPASSWORD", value="hunter2"), "Deployment"),
     MLFLOW, ".value"),
    ("s3-settings-from-secret", RAYJOB,
     lambda r: edit(r, RAYJOB, lambda d: set_env(head_container(d), "AWS_ENDPOINT_URL", value="http://minio:9000")),
     RAYJOB, "headGroupSpec.template.spec.containers[0].env"),
    ("mlflow-auth", MLFLOW,
     lambda r: edit(r, MLFLOW, lambda d: replace_arg(mlflow_container(d), "--app-name", None), "Deployment"),
     MLFLOW, "Deployment/mlflow spec.template.spec.containers[0].args"),
    ("mlflow-allowed-hosts", MLFLOW,
     lambda r: edit(r, MLFLOW, lambda d: replace_arg(mlflow_container(d), "--allowed-hosts",
                                                     "--allowed-hosts=localhost:*"), "Deployment"),
     MLFLOW, "Deployment/mlflow spec.template.spec.containers[0].args"),
    ("mlflow-durable-storage", MLFLOW,
     lambda r: edit(r, MLFLOW, lambda d: replace_arg(mlflow_container(d), "--backend-store-uri",
                                                     "--backend-store-uri=sqlite:///mlflow.db"), "Deployment"),
     MLFLOW, "Deployment/mlflow spec.template.spec.containers[0].args"),
    # container-resources: checkov CKV_K8S_10..13
    ("CKV_K8S_10", POSTGRES,
     lambda r: edit(r, POSTGRES, lambda d: mlflow_container(d).pop("resources"), "StatefulSet"),
     POSTGRES, "StatefulSet/mlflow-postgres spec.template.spec.containers[0].resources"),
    # images-pinned (manifests): checkov CKV_K8S_14
    ("CKV_K8S_14", POSTGRES,
     lambda r: edit(r, POSTGRES, lambda d: mlflow_container(d).update(image="postgres"), "StatefulSet"),
     POSTGRES, "containers[0].image"),
    ("configmap-references-resolve", MLFLOW,
     lambda r: edit(r, MLFLOW, lambda d: set_env(mlflow_container(d), "MLFLOW_ARTIFACTS_DESTINATION", valueFrom={
         "configMapKeyRef": {"name": "raylg-settings", "key": "NO_SUCH_KEY"}}), "Deployment"),
     MLFLOW, "configMapKeyRef.key"),
    ("ray-version-matches-pin", "infra/Dockerfile",
     lambda r: replace_text(r, "infra/Dockerfile", "ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.59.0"),
     "infra/Dockerfile", "FROM"),
    ("dockerfile-pins-match-pyproject", "infra/Dockerfile",
     lambda r: replace_text(r, "infra/Dockerfile", "ARG TORCH_VERSION=2.14.1", "ARG TORCH_VERSION=2.15.0"),
     "infra/Dockerfile", "RUN"),
]


def delegated_ids(tool: str) -> set[str]:
    """The check ids DELEGATED names for TOOL ("checkov", "hadolint")."""
    return {i.strip() for _what, by, _s in DELEGATED if by.startswith(tool)
            for i in by.split(" ", 1)[1].split(",")}


def test_every_rule_has_a_broken_case():
    """Each of raylg's rules, and one check of each rule left to checkov, has a case here;
    the hadolint ones are in test_dockerfile_base_image_must_be_pinned."""
    assert {c[0] for c in CASES} == {rule_name(r) for r in RULES} | {"CKV_K8S_10", "CKV_K8S_14", "CKV_K8S_26"}
    assert {"CKV_K8S_10", "CKV_K8S_14", "CKV_K8S_26"} <= delegated_ids("checkov")
    assert delegated_ids("hadolint") == {"DL3006", "DL3007"}


def find(violations, rule, file_suffix, field_part):
    hits = [v for v in violations if v.rule == rule and v.file.endswith(file_suffix) and field_part in v.field]
    assert hits, f"{rule} at {file_suffix} / {field_part} not in:\n" + "\n".join(map(str, violations))
    return hits


@requires_kubectl
@pytest.mark.parametrize("rule, _file, breaks, file_suffix, field_part", CASES, ids=[c[0] for c in CASES])
def test_rule_reports_broken_copy_with_file_and_field(repo, rule, _file, breaks, file_suffix, field_part):
    if rule == "kuberay-schema" and not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}")
    if rule.startswith("CKV") and not os.environ.get("CI") and not _installed(tools.checkov):
        pytest.skip("checkov is not installed")
    breaks(repo)
    violations = run_tool(rule, repo, repo / "infra" / "overlays" / "single-gpu")
    find(violations, rule, file_suffix, field_part)


@requires_kubectl
@requires_checkov
def test_checkov_findings_in_ray_pods_point_at_the_template_field(repo):
    """checkov sees the pods KubeRay makes of the RayJob; what it finds there is reported at
    the RayJob's own fields: head, worker group, autoscaler sidecar and submitter."""
    def break_four(doc):
        head_container(doc)["securityContext"]["privileged"] = True
        worker(doc)["template"]["spec"]["hostNetwork"] = True
        cluster(doc)["autoscalerOptions"].pop("resources")
        spec(doc)["submitterPodTemplate"]["spec"]["containers"][0]["securityContext"][
            "allowPrivilegeEscalation"] = True
    edit(repo, RAYJOB, break_four)
    violations = run_checkov(repo / "infra" / "overlays" / "single-gpu")
    find(violations, "CKV_K8S_16", RAYJOB, "headGroupSpec.template.spec.containers[0].securityContext.privileged")
    find(violations, "CKV_K8S_19", RAYJOB, "spec.rayClusterSpec.workerGroupSpecs[0].template.spec")
    find(violations, "CKV_K8S_10", RAYJOB, "spec.rayClusterSpec.autoscalerOptions.resources.requests.cpu")
    find(violations, "CKV_K8S_20", RAYJOB,
         "spec.submitterPodTemplate.spec.containers[0].securityContext.allowPrivilegeEscalation")


# ---- more than one thing at a time, and where patches are blamed ---------------------------


@requires_kubectl
@requires_checkov
def test_every_violation_is_reported_not_just_the_first(repo):
    edit(repo, RAYJOB, lambda d: cluster(d)["authOptions"].update(mode="disabled"))
    edit(repo, RAYJOB, lambda d: spec(d).update(entrypoint="python train.py"))
    edit(repo, MLFLOW, lambda d: spec(d).update(type="NodePort"), "Service")
    edit(repo, POSTGRES, lambda d: mlflow_container(d).update(image="postgres:latest"), "StatefulSet")
    target = repo / "infra" / "overlays" / "single-gpu"
    violations = run_check(target) + run_checkov(target)
    find(violations, "ray-token-auth", RAYJOB, "authOptions.mode")
    find(violations, "rayjob-entrypoint", RAYJOB, "spec.entrypoint")
    find(violations, "services-cluster-ip", MLFLOW, "spec.type")
    find(violations, "CKV_K8S_14", POSTGRES, "image")


@requires_kubectl
@requires_crds
def test_schema_errors_are_all_reported(repo):
    def break_two(doc):
        worker(doc)["maxReplicas"] = "many"
        head(doc)["template"]["spec"]["containers"][0]["resourcez"] = {}
    edit(repo, RAYJOB, break_two)
    violations = run_check(repo / "infra" / "overlays" / "single-gpu")
    find(violations, "kuberay-schema", RAYJOB, "workerGroupSpecs[0].maxReplicas")
    find(violations, "kuberay-schema", RAYJOB, "containers[0].resourcez")


@requires_kubectl
def test_a_patch_is_blamed_for_what_it_sets(repo):
    patch = "infra/overlays/multi-node/worker-groups.yaml"
    ops = yaml.safe_load((repo / patch).read_text())
    ops[2]["value"]["template"]["spec"].pop("tolerations")  # the added 4-GPU group
    (repo / patch).write_text(yaml.safe_dump(ops, sort_keys=False))
    violations = run_check(repo / "infra" / "overlays" / "multi-node")
    find(violations, "gpu-worker-groups", patch, "workerGroupSpecs[1].template.spec.tolerations")


@requires_kubectl
def test_ray_version_is_read_from_pyproject(repo):
    replace_text(repo, "pyproject.toml", '"ray[default,train,tune]==2.60.*"', '"ray[default,train,tune]==2.61.*"')
    violations = run_check(repo / "infra" / "overlays" / "single-gpu")
    find(violations, "ray-version-matches-pin", "infra/Dockerfile", "FROM")
    find(violations, "ray-version-matches-pin", RAYJOB, "rayVersion")


@requires_hadolint
@pytest.mark.parametrize("image, code", [("python", "DL3006"), ("python:latest", "DL3007")])
def test_dockerfile_base_image_must_be_pinned(repo, image, code):
    replace_text(repo, "infra/mlflow/Dockerfile", "FROM python:3.11.13-slim-bookworm", f"FROM {image}")
    find(hadolint.scan(repo), code, "infra/mlflow/Dockerfile", "FROM")


@requires_kubectl
def test_mlflow_image_without_the_auth_extra_is_caught(repo):
    # Found by running the manifest's `mlflow server` command locally: basic-auth needs Flask-WTF.
    replace_text(repo, "infra/mlflow/Dockerfile", '"mlflow[auth]==', '"mlflow==')
    violations = run_check(repo / "infra" / "overlays" / "single-gpu")
    find(violations, "mlflow-auth", "infra/mlflow/Dockerfile", "RUN")


@requires_kubectl
def test_credentials_in_a_url_or_runtime_env_are_caught(repo):
    edit(repo, MLFLOW, lambda d: replace_arg(mlflow_container(d), "--backend-store-uri",
                                             "--backend-store-uri=postgresql://mlflow:s3cret@db/mlflow"), "Deployment")
    edit(repo, RAYJOB, lambda d: spec(d).update(runtimeEnvYAML="env_vars:\n  AWS_SECRET_ACCESS_KEY: abc123\n"))
    violations = run_check(repo / "infra" / "overlays" / "single-gpu")
    find(violations, "no-plaintext-secrets", MLFLOW, "args")
    find(violations, "no-plaintext-secrets", RAYJOB, "spec.runtimeEnvYAML")


# ---- the command line --------------------------------------------------------------------


def cli(*args, cwd=ROOT, module=False):
    """`python infra/check ARGS` (or, from infra/, `python -m check ARGS`)."""
    env = {**os.environ, "RAYLG_KUBERAY_CRDS": str(CRDS)}
    command = ["-m", "check"] if module else [str(ROOT / "infra" / "check")]
    return subprocess.run([sys.executable, *command, *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


@requires_kubectl
@requires_crds
@requires_checkov
@requires_hadolint
def test_cli_exit_codes_and_output(repo):
    clean = cli("check", str(ROOT / "infra" / "overlays" / "single-gpu"))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    edit(repo, RAYJOB, lambda d: cluster(d)["authOptions"].update(mode="disabled"))
    edit(repo, MLFLOW, lambda d: spec(d).update(type="LoadBalancer"), "Service")
    edit(repo, MLFLOW, lambda d: mlflow_container(d)["securityContext"].update(privileged=True), "Deployment")
    replace_text(repo, "infra/mlflow/Dockerfile", "FROM python:3.11.13-slim-bookworm", "FROM python")
    broken = cli(str(repo / "infra" / "overlays" / "single-gpu"))  # `check` is the default
    assert broken.returncode == 1
    assert "infra/base/sweep/rayjob.yaml: RayJob/raylg-sweep spec.rayClusterSpec.authOptions.mode:" in broken.stdout
    assert "infra/base/common/mlflow.yaml: Service/mlflow spec.type:" in broken.stdout
    assert ("infra/base/common/mlflow.yaml: Deployment/mlflow "
            "spec.template.spec.containers[0].securityContext.privileged:") in broken.stdout
    assert "[CKV_K8S_16]" in broken.stdout
    assert "infra/mlflow/Dockerfile: line 6 FROM:" in broken.stdout and "[DL3006]" in broken.stdout
    listing = cli("rules")
    assert listing.returncode == 0 and "ray-token-auth" in listing.stdout and "CKV_K8S_14" in listing.stdout


@requires_kubectl
@requires_crds
def test_cli_runs_as_a_module_from_infra_and_says_when_a_tool_is_missing():
    without = cli("overlays/single-gpu", "--without", "checkov", "--without", "hadolint",
                  cwd=ROOT / "infra", module=True)
    assert without.returncode == 0, without.stdout + without.stderr
    env = {**os.environ, "CHECKOV": "", "PATH": os.path.dirname(kubectl()), "XDG_CACHE_HOME": "/nonexistent"}
    missing = subprocess.run([sys.executable, str(ROOT / "infra" / "check"), "--without", "hadolint"],
                             cwd=ROOT, env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "checkov not found" in missing.stderr, missing.stderr
