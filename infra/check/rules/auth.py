"""Ray's token authentication is on for every cluster, and nothing turns it off."""

from __future__ import annotations

from ..walk import containers, ray_cluster_specs


def ray_token_auth(bundle):
    """Every Ray cluster has authOptions.mode: token, and no container sets RAY_AUTH_MODE otherwise."""
    for res in bundle.of_kind("RayCluster", "RayJob"):
        for path, spec in ray_cluster_specs(res):
            options = spec.get("authOptions") or {}
            if options.get("mode") != "token":
                yield bundle.at(res, (*path, "authOptions", "mode"),
                                f"is {options.get('mode')!r}: token authentication is off "
                                "(anyone who reaches the dashboard can run code)")
        for cpath, container, _role in containers(res):
            for i, env in enumerate(container.get("env") or []):
                if isinstance(env, dict) and env.get("name") == "RAY_AUTH_MODE" \
                        and "value" in env and env["value"] != "token":
                    yield bundle.at(res, (*cpath, "env", i, "value"),
                                    f"RAY_AUTH_MODE={env['value']!r} turns token authentication off")
