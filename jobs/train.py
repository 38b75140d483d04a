"""Train one student on this machine, without Ray.

    python jobs/train.py                                   # tiny CPU preset on digits
    python jobs/train.py --config jobs/configs/cifar100-deit_tiny.yaml --set data.root=/data/cifar
    python jobs/train.py --set run.name=a --set run.resume=true   # continue runs/a
    python jobs/train.py --mlflow-uri http://mlflow:5000          # also record the run in MLflow

With --mlflow-uri the run is recorded as a sweep's trial is (params, the data and teacher as
dataset inputs, per-epoch and system metrics, the best student and the summary), in the
experiment --mlflow-experiment (default: the run's name); a server that does not answer or
refuses is reported before any training. --resume continues the MLflow run of that directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from raylg import cli  # noqa: E402
from raylg.errors import USER_ERRORS  # noqa: E402

DEFAULT = str(Path(__file__).resolve().parent / "configs" / "digits-tiny.yaml")


def main(argv: list[str] | None = None) -> dict:
    parser = cli.run_parser(__doc__, DEFAULT, name_help="run name (sets run.name); the run writes to OUT/NAME")
    parser.add_argument("--resume", action="store_true", help="continue OUT/NAME from its last checkpoint")
    parser.add_argument("--mlflow-uri", help="record the run in MLflow: a tracking server (http://HOST:5000) or store "
                                             "(sqlite:///path/mlflow.db)")
    parser.add_argument("--mlflow-experiment", help="MLflow experiment (default: the run's name, run.name)")
    args = parser.parse_args(argv)
    extra = cli.run_overrides(args)
    if args.resume:
        extra["run.resume"] = True
    cfg = run_dir = None
    try:
        from raylg.fit import fit
        from raylg.preflight import preflight

        cfg = cli.load_config(args, extra)
        preflight(cfg)
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        callbacks = _tracking(args, cfg, run_dir) if args.mlflow_uri else []
        summary = fit(cfg, run_dir, callbacks=callbacks)
    except USER_ERRORS + TRACKING_ERRORS as e:  # a diverging run (NonFiniteLoss) among them: exit 1, naming its checkpoint
        cli.fail(e, cfg=cfg, run_dir=run_dir)
    best = summary["best"]
    print(f"\n{cfg.model.name} on {cfg.data.name}: best val top-1 {best['val/top1']:.2f}% (epoch {best['epoch'] + 1})"
          + (f", test top-1 {summary['test/top1']:.2f}%" if "test/top1" in summary else ""))
    print(f"run directory: {run_dir}  (metrics.jsonl, checkpoints/, student.safetensors)")
    for cb in callbacks:
        print(f"MLflow: {cb.describe()}")
    return summary


TRACKING_ERRORS: tuple = ()  # raylg.tracking.TrackingError once --mlflow-uri loads it (mlflow is slow to import)


def _tracking(args, cfg, run_dir: Path) -> list:
    """The MLflow callback of this run, after checking the store answers (before any training)."""
    global TRACKING_ERRORS
    from raylg import config as config_lib, tracking

    TRACKING_ERRORS = (tracking.TrackingError,)
    tracking.check_reachable(args.mlflow_uri)
    tracker = tracking.Tracker(args.mlflow_uri)
    exp = tracker.experiment(args.mlflow_experiment or cfg.run.name, tracking.local_artifacts(args.mlflow_uri))
    tags = {"student": cfg.model.name, "beta": cfg.guidance.locality.beta if cfg.teacher.path else 0.0,
            "dataset": cfg.data.name, "per_class": cfg.data.per_class}
    run_id = tracker.plain_run(exp, cfg.run.name, str(run_dir.resolve()), config_lib.flatten(cfg), tags, resume=cfg.run.resume)
    return [tracking.MlflowCallback(tracker, run_id, owns_run=True)]


if __name__ == "__main__":
    main()
