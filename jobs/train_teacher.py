"""Train the CNN teacher alone on low-resolution images, then publish it for students.

    python jobs/train_teacher.py                                          # tiny CPU preset on digits
    python jobs/train_teacher.py --config jobs/configs/teacher-cifar100.yaml --set data.root=/data/cifar

Writes OUT/NAME/teacher.safetensors and its card teacher.json (architecture, val accuracy,
dataset fingerprint, config, sha256 of the weights). Students point teacher.path at the
.safetensors file; its hash and data fingerprint are checked when they load it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from raylg import cli  # noqa: E402
from raylg.errors import USER_ERRORS  # noqa: E402

DEFAULT = str(Path(__file__).resolve().parent / "configs" / "teacher-digits-tiny.yaml")


def main(argv: list[str] | None = None) -> Path:
    args = cli.run_parser(__doc__, DEFAULT).parse_args(argv)
    try:
        from raylg import teacher
        from raylg.fit import fit
        from raylg.preflight import preflight

        cfg = cli.load_config(args, cli.run_overrides(args))
        preflight(cfg)
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        fit(cfg, run_dir)
        weights, card = teacher.publish(run_dir)
    except USER_ERRORS as e:
        cli.fail(e)
    print(f"\nteacher {card['arch']}: val top-1 {card['val_top1']:.2f}%, stages {card['stage_channels']} channels")
    print(f"weights: {weights}\ncard:    {weights.with_suffix('.json')}  (sha256 {card['sha256'][:16]}…)")
    return weights


if __name__ == "__main__":
    main()
