"""python infra/check [check] [TARGET ...] | rules   (or, from infra/: python -m check ...)

Exit status: 0 when nothing is wrong, 1 on any violation, 2 when a target or a tool is
missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as `python infra/check`: make the folder importable as "check"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "check"

from . import check_bundle, checkov, hadolint, overlays  # noqa: E402
from .bundle import find_root, load  # noqa: E402
from .kustomize import kustomization_file  # noqa: E402
from .rules import DELEGATED, RULES, rule_name, rule_summary  # noqa: E402
from .tools import ToolMissing  # noqa: E402

TOOLS = ("checkov", "hadolint")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python infra/check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("check", help="validate overlays and Dockerfiles offline (the default)")
    run.add_argument("targets", nargs="*", type=Path,
                     help="kustomization directories (default: every infra/overlays/*)")
    run.add_argument("--crds", type=Path, help="folder with KubeRay's CRDs "
                     "(default: $RAYLG_KUBERAY_CRDS, then ../shared/kuberay-crds beside the repo)")
    run.add_argument("--kubernetes-version", default=None, help="schemas to validate against (e.g. 1.33)")
    run.add_argument("--without", action="append", choices=TOOLS, default=[],
                     help="do not run this maintained checker (repeatable): its checks are then not made")
    sub.add_parser("rules", help="list what is checked, and by which tool")
    return parser


def _print_rules() -> None:
    for rule in RULES:
        print(f"{rule_name(rule):34} {rule_summary(rule)}")
    print("\nLeft to maintained checkers (run by `check`):")
    for what, tool, summary in DELEGATED:
        print(f"{what:34} {tool}: {summary}")


def _report(name: str, violations) -> int:
    print(f"{name}: {'ok' if not violations else f'{len(violations)} violation(s)'}")
    for violation in violations:
        print(f"  {violation}")
    return len(violations)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("check", "rules", "-h", "--help"):
        argv.insert(0, "check")
    args = _parser().parse_args(argv)
    if args.command == "rules":
        _print_rules()
        return 0
    root = find_root(args.targets[0] if args.targets else Path.cwd())
    targets = args.targets or overlays(root)
    if not targets:
        print("no targets: pass a kustomization directory, or run inside the repository", file=sys.stderr)
        return 2
    for target in targets:
        if kustomization_file(Path(target)) is None:
            print(f"error: {target} is not a kustomization directory (no kustomization.yaml)", file=sys.stderr)
            return 2
    options = {k: v for k, v in (("crds", args.crds), ("kubernetes_version", args.kubernetes_version)) if v}
    total = 0
    try:
        for target in targets:
            bundle = load(target, **options)
            violations = check_bundle(bundle)
            if "checkov" not in args.without:
                violations += checkov.scan(bundle)
            total += _report(str(target), violations)
        if "hadolint" not in args.without:
            total += _report("infra/ Dockerfiles", hadolint.scan(root))
    except (ToolMissing, RuntimeError) as exc:  # a checker missing, or one that gave no report
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{total} violation(s) in {len(targets)} target(s)")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
