"""No credential in any manifest, runtime env or command line: they come from Secrets
created out of band, referenced with secretKeyRef."""

from __future__ import annotations

import re

from ..walk import containers, iter_nodes

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_?KEY", re.I)
NOT_A_SECRET = re.compile(r"(_PATH|_FILE|_NAME|_MODE)$", re.I)
S3_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

# A value that is a reference, not a credential: $VAR, $(VAR), ${VAR}, <placeholder>, {{ }}.
_REF = r"""(?![\s"']*(\$|<|\{\{|$))"""
PATTERNS = (
    ("a URL with a password", re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@", re.I)),
    ("an AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a credential assignment", re.compile(
        r"(password|passwd|secret|token|secret_access_key|access_key_id|api_key)[\"']?\s*[=:]" + _REF, re.I)),
    ("a credential flag", re.compile(
        r"--(password|passwd|token|secret|access-key|secret-key|api-key)(=|\s+)" + _REF + r"\S", re.I)),
)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not NOT_A_SECRET.search(name)


def no_plaintext_secrets(bundle):
    """No Secret with values, no secret-named env var with a literal value, and no
    credential-looking text (URL passwords, keys, `password=...`) in any string."""
    for res in bundle.objects:
        if res.kind == "Secret":
            for key in ("data", "stringData"):
                if res.obj.get(key):
                    yield bundle.at(res, (key,), "a Secret with values in the manifests: "
                                    "create it with `kubectl create secret` instead")
            continue
        for path, container, _role in containers(res):
            for i, env in enumerate(container.get("env") or []):
                if isinstance(env, dict) and is_secret_name(str(env.get("name", ""))) \
                        and str(env.get("value", "")).strip():
                    yield bundle.at(res, (*path, "env", i, "value"),
                                    f"{env['name']} has a literal value: use valueFrom.secretKeyRef")
        if res.kind == "ConfigMap":
            for key in res.obj.get("data") or {}:
                if is_secret_name(key):
                    yield bundle.at(res, ("data", key), "a secret-named key in a ConfigMap: use a Secret")
        for path, node in iter_nodes(res.obj):
            if not isinstance(node, str):
                continue
            for what, pattern in PATTERNS:
                if pattern.search(node):
                    yield bundle.at(res, path, f"contains {what} in plain text")
                    break


def s3_settings_from_secret(bundle):
    """The S3 endpoint and credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) come from a
    Secret via secretKeyRef, never from a literal or a ConfigMap."""
    for res in bundle.objects:
        for path, container, _role in containers(res):
            for i, env in enumerate(container.get("env") or []):
                if not isinstance(env, dict) or env.get("name") not in S3_SETTINGS:
                    continue
                if "secretKeyRef" not in (env.get("valueFrom") or {}):
                    yield bundle.at(res, (*path, "env", i),
                                    f"{env['name']} must come from a Secret (valueFrom.secretKeyRef)")
            for i, source in enumerate(container.get("envFrom") or []):
                name = (source.get("configMapRef") or {}).get("name") if isinstance(source, dict) else None
                data = bundle.configmap_data(name) if name else None
                for key in sorted(set(data or {}) & set(S3_SETTINGS)):
                    yield bundle.at(res, (*path, "envFrom", i),
                                    f"{key} comes from ConfigMap {name}: it must come from a Secret")
