"""python -m raylg.infra check [TARGET ...] | rules"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import KubectlMissing, check, overlays
from .bundle import find_root
from .rules import RULES, rule_name, rule_summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m raylg.infra", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("check", help="validate overlays offline; exit 1 on any violation")
    run.add_argument("targets", nargs="*", type=Path,
                     help="kustomization directories (default: every infra/overlays/*)")
    run.add_argument("--crds", type=Path, help="folder with KubeRay's CRDs "
                     "(default: $RAYLG_KUBERAY_CRDS, then ../shared/kuberay-crds beside the repo)")
    run.add_argument("--kubernetes-version", default=None, help="schemas to validate against (e.g. 1.33)")
    sub.add_parser("rules", help="list the rules")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "rules":
        for rule in RULES:
            print(f"{rule_name(rule):34} {rule_summary(rule)}")
        return 0
    targets = args.targets or overlays(find_root(Path.cwd()))
    if not targets:
        print("no targets: pass a kustomization directory, or run inside the repository", file=sys.stderr)
        return 2
    options = {k: v for k, v in (("crds", args.crds), ("kubernetes_version", args.kubernetes_version)) if v}
    total = 0
    for target in targets:
        try:
            violations = check(target, **options)
        except KubectlMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        total += len(violations)
        status = "ok" if not violations else f"{len(violations)} violation(s)"
        print(f"{target}: {status}")
        for violation in violations:
            print(f"  {violation}")
    print(f"{total} violation(s) in {len(targets)} target(s)")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
