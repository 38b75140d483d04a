"""Sweep LG runs on Ray: Tune + ASHA over any config field, each trial a Ray Train run, MLflow
parent/child tracking. With no arguments: a real small sweep on this machine's CPU, on the
bundled digits, with no network.

    python jobs/sweep.py
    python jobs/sweep.py --config jobs/configs/sweeps/cifar100-paper.yaml --storage s3://bucket/raylg --mlflow-uri http://mlflow:5000
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/sweep.py

Joins the cluster at RAY_ADDRESS when set (ray job submit sets it), else starts a local Ray.
Running the same sweep name again resumes it: finished trials are not re-run. Prints the
trials' table, the verdict (arms x settings: mean ± std over seeds, paired difference against
the baseline arm) and every failed trial's error; exits 1 when any trial failed (a trial the
scheduler stopped early has not failed), 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from raylg import cli  # noqa: E402
from raylg.errors import USER_ERRORS  # noqa: E402

DEFAULT = str(Path(__file__).resolve().parent / "configs" / "sweeps" / "digits-lg.yaml")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT, help=f"sweep file (default: {DEFAULT})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep-file field, e.g. --set max_concurrent=4 --set 'set={schedule.epochs: 3}'")
    parser.add_argument("--name", help="sweep name (MLflow experiment and storage folder)")
    parser.add_argument("--storage", help="local directory or s3://bucket/prefix for checkpoints and results")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite file in the sweep's directory)")
    args = parser.parse_args(argv)
    extra = {k: v for k, v in (("name", args.name), ("storage", args.storage), ("mlflow_uri", args.mlflow_uri)) if v}
    try:
        from raylg import config as config_lib
        from raylg.preflight import preflight
        from raylg.ray import report, spec, sweep
        from raylg.ray.teachers import TeacherStageError
        from raylg.tracking import TrackingError

        overrides = config_lib.parse_set(args.overrides)
        overrides.update(extra)
        s = spec.load(args.config, overrides, check=preflight)
        rows = sweep.run(s)
    except USER_ERRORS + (sweep.SweepError, TrackingError, TeacherStageError) as e:
        cli.fail(e)
    paths = sweep.Paths.of(s)
    uri = s.spec.mlflow_uri or sweep.default_uri(paths.local)
    print("\n" + report.closing_text(s, rows))
    if s.spec.arms or s.spec.seeds:
        print(f"\nverdict files:   {paths.local / report.VERDICT}.{{md,csv,json,png}}")
    from raylg import tracking

    exp = tracking.Tracker(uri).experiment(s.spec.name)
    print(f"\nMLflow tracking: {uri}  (experiment {s.spec.name!r})")
    serve = tracking.ui_command(uri)
    print(f"open the UI:     {serve + ' --port 5000   then ' if serve else ''}{tracking.ui_url(uri, exp)}")
    failed = [r for r in rows if r["status"] == "FAILED"]
    if failed:
        print(f"\nerror: {len(failed)} of {len(rows)} trials failed", file=sys.stderr)
        raise SystemExit(1)
    return rows


if __name__ == "__main__":
    main()
