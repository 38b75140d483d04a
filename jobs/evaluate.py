"""Evaluate a run's weights on a named split (the reference's `run_net.py --mode test`).

    python jobs/evaluate.py runs/digits-lg                          # a run directory, test split
    python jobs/evaluate.py runs/digits-lg/checkpoints/best --split val
    python jobs/evaluate.py runs/c100/student.safetensors --set data.root=/data/cifar
    python jobs/evaluate.py runs/c100 --mlflow-uri http://mlflow:5000 --run-id 3f2a...   # also log to that run

Writes eval_<split>.json (top-1, top-5, loss, per-class accuracy, confusion matrix, split
fingerprint) and eval_<split>_confusion.png beside the weights; prints top-1/top-5. The
logic lives in raylg.evaluate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from raylg import cli, config as config_lib  # noqa: E402
from raylg.errors import USER_ERRORS  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a run directory, a checkpoint directory or a student .safetensors file")
    parser.add_argument("--split", default="test", help="val or test (default: test)")
    parser.add_argument("--config", help="the run's config.yaml (default: the one beside the weights)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field first, e.g. --set data.root=/data/cifar (repeatable)")
    parser.add_argument("--mlflow-uri", help="also log the metrics and files to an MLflow run at this tracking URI")
    parser.add_argument("--run-id", help="the MLflow run to log to (with --mlflow-uri)")
    args = parser.parse_args(argv)
    from raylg.evaluate import EvaluateError, evaluate

    try:
        mlflow = (args.mlflow_uri or "", args.run_id or "") if (args.mlflow_uri or args.run_id) else None
        result = evaluate(args.path, args.split, config=args.config, overrides=config_lib.parse_set(args.overrides),
                          mlflow=mlflow)
    except (EvaluateError, *USER_ERRORS) as e:
        cli.fail(e)
    mean_class = result["mean_class_accuracy"]
    print(f"{result['model']} on {result['dataset']} {result['split']} ({result['count']} images): "
          f"top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%"
          + (f", mean class accuracy {mean_class:.2f}%" if mean_class is not None else ""))
    print(f"wrote {result['files']['json']} and {result['files']['png']}"
          + (f"; logged to MLflow run {result['mlflow']['run_id']}" if "mlflow" in result else ""))
    if result["matches_run_data"] is False:
        print(f"warning: the {result['split']} split rebuilt here differs from the one the run recorded in data.json "
              f"(another data.root, dataset version or override?)", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
