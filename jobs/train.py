"""Train one student on this machine, without Ray.

    python jobs/train.py                                   # tiny CPU preset on digits
    python jobs/train.py --config jobs/configs/cifar100-deit_tiny.yaml --set data.root=/data/cifar
    python jobs/train.py --set run.name=a --set run.resume=true   # continue runs/a
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from raylg import cli  # noqa: E402
from raylg.errors import USER_ERRORS  # noqa: E402

DEFAULT = str(Path(__file__).resolve().parent / "configs" / "digits-tiny.yaml")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(parser, DEFAULT)
    parser.add_argument("--out", help="output root (sets run.out_dir)")
    parser.add_argument("--name", help="run name (sets run.name); the run writes to OUT/NAME")
    parser.add_argument("--resume", action="store_true", help="continue OUT/NAME from its last checkpoint")
    args = parser.parse_args(argv)
    extra = {k: v for k, v in (("run.out_dir", args.out), ("run.name", args.name)) if v}
    if args.resume:
        extra["run.resume"] = True
    cfg = run_dir = None
    try:
        from raylg.fit import fit
        from raylg.preflight import preflight

        cfg = cli.load_config(args, extra)
        preflight(cfg)
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        summary = fit(cfg, run_dir)
    except USER_ERRORS as e:  # a diverging run (NonFiniteLoss) among them: exit 1, naming its checkpoint
        cli.fail(e, cfg=cfg, run_dir=run_dir)
    best = summary["best"]
    print(f"\n{cfg.model.name} on {cfg.data.name}: best val top-1 {best['val/top1']:.2f}% (epoch {best['epoch'] + 1})"
          + (f", test top-1 {summary['test/top1']:.2f}%" if "test/top1" in summary else ""))
    print(f"run directory: {run_dir}  (metrics.jsonl, checkpoints/, student.safetensors)")
    return summary


if __name__ == "__main__":
    main()
