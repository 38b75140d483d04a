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


def run_parser(doc: str, default: str, name_help: str = "run name (sets run.name)") -> argparse.ArgumentParser:
    """The parser of a job that trains one run: --config, --set, --out (run.out_dir) and --name (run.name)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default)
    parser.add_argument("--out", help="output root (sets run.out_dir)")
    parser.add_argument("--name", help=name_help)
    return parser


def run_overrides(args: argparse.Namespace) -> dict:
    """run.out_dir and run.name from --out and --name, where given."""
    return {k: v for k, v in (("run.out_dir", args.out), ("run.name", args.name)) if v}


def load_config(args: argparse.Namespace, extra: dict | None = None, cls=config_lib.Config):
    overrides = config_lib.parse_set(args.overrides)
    overrides.update(extra or {})
    return config_lib.load(args.config, overrides, cls=cls)


def fail(err: Exception, *, cfg=None, run_dir=None) -> "None":
    """Print a clear one-line error (no traceback) and exit: 2 for input refused before work
    started; 1 for a run that diverged (the line adds a hint and what happened to its checkpoints)."""
    from raylg.engine import NonFiniteLoss

    if isinstance(err, NonFiniteLoss):
        print(f"error: training diverged: {err}; {diverged_hint(cfg, run_dir)}", file=sys.stderr)
        raise SystemExit(1)
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)


def diverged_hint(cfg=None, run_dir=None) -> str:
    """What a diverged run kept (its newest checkpoint whose recorded losses are finite), and what to change."""
    lr = f" (now {cfg.optim.lr:g})" if cfg is not None else ""
    hint = f"hint: lower optim.lr{lr}, clip gradients (optim.clip_grad, e.g. 1.0) or lengthen the warmup (schedule.warmup_epochs)"
    return (checkpoints_kept(run_dir) + "; " if run_dir is not None else "") + hint


def _finite_losses(ckpt) -> tuple[int, list[str]]:
    """(epoch, names of the non-finite losses it recorded) of a checkpoint directory."""
    import json
    import math

    from raylg import checkpoint

    state = json.loads((ckpt / checkpoint.STATE_FILE).read_text())
    row = state.get("metrics", {}).get("row", {})
    bad = [k for k, v in row.items() if "loss" in k and isinstance(v, float) and not math.isfinite(v)]
    return state["epoch"], bad


def checkpoints_kept(run_dir) -> str:
    from pathlib import Path

    from raylg import checkpoint

    found = {k: checkpoint.find(Path(run_dir) / "checkpoints" / k) for k in ("last", "best")}
    if found["last"] is None:
        return "no checkpoint was written (it diverged in its first epoch)"
    epoch, bad = _finite_losses(found["last"])
    if not bad:
        return f"its last good checkpoint (epoch {epoch + 1}) is kept in {found['last']}"
    out = f"its last checkpoint (epoch {epoch + 1}) already recorded a non-finite {', '.join(bad)}"
    if found["best"] is not None:
        best_epoch, best_bad = _finite_losses(found["best"])
        if not best_bad:
            return f"{out}; the last good one is the best checkpoint (epoch {best_epoch + 1}) in {found['best']}"
    return f"{out}, and no checkpoint with finite losses was kept"
