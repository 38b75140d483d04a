"""The MLflow tracking server: authentication on, Host header checked against the
in-cluster service name, tracking data and users in PostgreSQL, artifacts proxied to S3."""

from __future__ import annotations

import configparser
import fnmatch
import re
from pathlib import PurePosixPath
from urllib.parse import urlparse

from ..pins import dockerfiles, parse_dockerfile
from ..violation import Violation
from ..walk import containers, env_value, get, map_selects, mlflow_servers, pod_labels

_K8S_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _flags(argv: list[str]) -> dict[str, tuple[int, str | bool]]:
    """--flag[=value] / --flag value -> {flag: (argv index, value or True)}."""
    found: dict[str, tuple[int, str | bool]] = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        if "=" in arg:
            name, value = arg.split("=", 1)
            found[name] = (i, value)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            found[arg] = (i, argv[i + 1])
        else:
            found[arg] = (i, True)
    return found


def _argv_path(container: dict, cpath: tuple, index: int) -> tuple:
    command = container.get("command") or []
    if index < len(command):
        return (*cpath, "command", index)
    return (*cpath, "args", index - len(command))


def _setting(bundle, container, argv, flag, env):
    """(value, argv index or None) of an mlflow server option given as a flag or env var,
    with Kubernetes $(VAR) references expanded."""
    index, value = _flags(argv).get(flag, (None, None))
    if value is None:
        value = env_value(bundle, container, env)
    if isinstance(value, str):
        value = _K8S_VAR.sub(lambda m: env_value(bundle, container, m.group(1)) or m.group(0), value)
    return value, index


def _secret_env(container: dict, name: str) -> bool:
    for env in container.get("env") or []:
        if isinstance(env, dict) and env.get("name") == name:
            return "secretKeyRef" in (env.get("valueFrom") or {})
    return False


def _servers(bundle):
    for res in bundle.of_kind("Deployment", "StatefulSet"):
        for cpath, container, argv in mlflow_servers(res):
            yield res, cpath, container, argv


def mlflow_auth(bundle):
    """MLflow runs with --app-name basic-auth, its security middleware on, its admin
    password and Flask secret key from Secrets, and an image with the mlflow[auth] extra."""
    if any(True for _ in _servers(bundle)):
        for path in dockerfiles(bundle.root):
            parsed = parse_dockerfile(path)
            for line, package, _version in parsed.pip_pins:
                if package.lower() == "mlflow" and "auth" not in parsed.pip_extras.get("mlflow", set()):
                    yield Violation(bundle.rel(path), f"line {line} RUN", "installs mlflow without the "
                                    "[auth] extra: basic-auth fails to start without Flask-WTF")
    for res, cpath, container, argv in _servers(bundle):
        index, app = _flags(argv).get("--app-name", (None, None))
        if app != "basic-auth":
            where = _argv_path(container, cpath, index) if index is not None else (*cpath, "args")
            yield bundle.at(res, where, f"--app-name is {app or 'not set'}: authentication is off "
                            "(use --app-name=basic-auth)")
        flags = _flags(argv)
        if "--disable-security-middleware" in flags:
            yield bundle.at(res, _argv_path(container, cpath, flags["--disable-security-middleware"][0]),
                            "disables MLflow's host and CORS checks")
        if env_value(bundle, container, "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE") == "true":
            yield bundle.at(res, (*cpath, "env"), "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE turns checks off")
        for name, why in (("MLFLOW_FLASK_SERVER_SECRET_KEY", "basic-auth refuses to start without it"),
                          ("MLFLOW_AUTH_ADMIN_PASSWORD", "the admin user is created from it")):
            if not _secret_env(container, name):
                yield bundle.at(res, (*cpath, "env"), f"{name} must come from a Secret ({why})")


def _allowed(patterns: list[str], host: str) -> bool:
    """MLflow's own test: exact match, or fnmatch for patterns with '*'."""
    return any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in patterns)


def _service_hosts(bundle, res, pod_path):
    """Host headers in-cluster clients send: SERVICE.NAMESPACE.svc:PORT for each Service of the pods."""
    labels = pod_labels(res, pod_path)
    for svc in bundle.of_kind("Service"):
        selector = get(svc.obj, ("spec", "selector"))
        if selector and svc.namespace == res.namespace and map_selects(selector, labels):
            for port in get(svc.obj, ("spec", "ports")) or []:
                host = f"{svc.name}.{svc.namespace}.svc" if svc.namespace else svc.name
                yield svc, f"{host}:{port.get('port')}"


def _tracking_uris(bundle):
    """(res, path, uri) of MLFLOW_TRACKING_URI as every container sees it."""
    for res in bundle.objects:
        for cpath, container, _role in containers(res):
            uri = env_value(bundle, container, "MLFLOW_TRACKING_URI")
            if uri:
                yield res, cpath, uri


def mlflow_allowed_hosts(bundle):
    """--allowed-hosts is set, not '*', and admits the in-cluster service name and every
    MLFLOW_TRACKING_URI the Ray pods use (else they get 403 Invalid Host header)."""
    servers = list(_servers(bundle))
    for res, cpath, container, argv in servers:
        value, index = _setting(bundle, container, argv, "--allowed-hosts", "MLFLOW_SERVER_ALLOWED_HOSTS")
        where = _argv_path(container, cpath, index) if index is not None else (*cpath, "args")
        if not isinstance(value, str) or not value.strip():
            yield bundle.at(res, where, "--allowed-hosts is not set: MLflow's default admits any private IP")
            continue
        patterns = [p.strip() for p in value.split(",") if p.strip()]
        if "*" in patterns:
            yield bundle.at(res, where, "--allowed-hosts contains '*': host checking is off")
            continue
        for _svc, host in _service_hosts(bundle, res, cpath[:-2]):
            if not _allowed(patterns, host):
                yield bundle.at(res, where, f"--allowed-hosts does not admit {host}, the in-cluster service name")
        services = {svc.name for svc, _h in _service_hosts(bundle, res, cpath[:-2])}
        for user, upath, uri in _tracking_uris(bundle):
            parsed = urlparse(uri)
            if not parsed.hostname or parsed.hostname.split(".")[0] not in services:
                continue
            host = parsed.netloc.rsplit("@", 1)[-1]
            if not _allowed(patterns, host):
                yield bundle.at(user, upath, f"MLFLOW_TRACKING_URI {uri} sends Host {host}, which "
                                f"{res.ref}'s --allowed-hosts rejects (403 Invalid Host header)")


def _auth_database(bundle, res, container, pod_path) -> str | None:
    """database_uri of the basic-auth config file, read from the ConfigMap mounted at its path."""
    config_path = env_value(bundle, container, "MLFLOW_AUTH_CONFIG_PATH")
    if not config_path:
        return "sqlite:///basic_auth.db"  # MLflow's packaged default
    pod = get(res.obj, pod_path) or {}
    volumes = {v.get("name"): v for v in pod.get("volumes") or [] if isinstance(v, dict)}
    for mount in container.get("volumeMounts") or []:
        mount_path = PurePosixPath(str(mount.get("mountPath", "/")))
        target = PurePosixPath(config_path)
        if mount_path not in target.parents:
            continue
        cm = (volumes.get(mount.get("name")) or {}).get("configMap") or {}
        data = bundle.configmap_data(str(cm.get("name"))) or {}
        text = data.get(str(target.relative_to(mount_path)))
        if text is None:
            return None
        parser = configparser.ConfigParser()
        parser.read_string(text)
        return parser.get("mlflow", "database_uri", fallback="sqlite:///basic_auth.db")
    return None


def mlflow_durable_storage(bundle):
    """MLflow keeps runs and users in PostgreSQL (a StatefulSet with a volume, or external)
    and proxies artifacts to S3: nothing lives only on the pod's disk."""
    for res, cpath, container, argv in _servers(bundle):
        pod_path = cpath[:-2]
        backend, index = _setting(bundle, container, argv, "--backend-store-uri", "MLFLOW_BACKEND_STORE_URI")
        where = _argv_path(container, cpath, index) if index is not None else (*cpath, "args")
        if not isinstance(backend, str) or not backend.startswith(("postgresql", "mysql")):
            yield bundle.at(res, where, f"backend store {backend!r} is not a database server: runs are lost "
                            "when the pod goes")
        flags = _flags(argv)
        if "--no-serve-artifacts" in flags or "--artifacts-only" in flags:
            yield bundle.at(res, (*cpath, "args"), "artifacts are not proxied by the tracking server")
        dest, index = _setting(bundle, container, argv, "--artifacts-destination", "MLFLOW_ARTIFACTS_DESTINATION")
        where = _argv_path(container, cpath, index) if index is not None else (*cpath, "args")
        if not isinstance(dest, str) or not dest.startswith("s3://"):
            yield bundle.at(res, where, f"--artifacts-destination {dest!r} is not an s3:// URI")
        auth_db = _auth_database(bundle, res, container, pod_path)
        if auth_db is not None and not auth_db.startswith(("postgresql", "mysql")):
            yield bundle.at(res, (*cpath, "env"), f"basic-auth users are stored in {auth_db!r}, "
                            "inside the pod: set database_uri in MLFLOW_AUTH_CONFIG_PATH to PostgreSQL")
    for res in bundle.of_kind("StatefulSet"):
        for cpath, container, _role in containers(res):
            if not str(container.get("image", "")).split("/")[-1].startswith("postgres"):
                continue
            claims = {c.get("metadata", {}).get("name") for c in get(res.obj, ("spec", "volumeClaimTemplates")) or []}
            mounts = {m.get("name") for m in container.get("volumeMounts") or []}
            if not claims & mounts:
                yield bundle.at(res, ("spec", "volumeClaimTemplates"),
                                "PostgreSQL has no persistent volume: MLflow's data dies with the pod")
