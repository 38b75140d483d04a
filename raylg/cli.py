"""Command-line plumbing shared by jobs/*.py: --config FILE, --set KEY=VALUE overrides."""

from __future__ import annotations

import argparse
import sys

from raylg import config as config_lib



def add_config_args(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument("--config", default=default,
                        help=f"YAML config (default: {default}); a 'base: other.yaml' key inherits another file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field by dotted key, e.g. --set optim.lr=1e-3 --set data.per_class=50 (repeatable)")


def load_config(args: argparse.Namespace, extra: dict | None = None, cls=config_lib.Config):
    overrides = config_lib.parse_set(args.overrides)
    overrides.update(extra or {})
    return config_lib.load(args.config, overrides, cls=cls)


def fail(err: Exception) -> "None":
    """Print a clear one-line error (no traceback) and exit 2."""
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)
