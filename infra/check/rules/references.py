"""Every ConfigMap a pod refers to is rendered with the keys asked for. (Secrets are
created outside the manifests, so only their use is checked elsewhere.)"""

from __future__ import annotations

from ..walk import iter_nodes


def configmap_references_resolve(bundle):
    """configMapKeyRef, envFrom configMapRef and configMap volumes name rendered ConfigMaps and keys."""
    for res in bundle.objects:
        for path, node in iter_nodes(res.obj):
            if not isinstance(node, dict):
                continue
            for key in ("configMapKeyRef", "configMapRef", "configMap"):
                ref = node.get(key)
                if not isinstance(ref, dict) or "name" not in ref or ref.get("optional") is True:
                    continue
                data = bundle.configmap_data(str(ref["name"]))
                if data is None:
                    yield bundle.at(res, (*path, key, "name"),
                                    f"ConfigMap {ref['name']!r} is not in the rendered manifests")
                elif key == "configMapKeyRef" and ref.get("key") not in data:
                    yield bundle.at(res, (*path, key, "key"),
                                    f"ConfigMap {ref['name']!r} has no key {ref.get('key')!r}")
