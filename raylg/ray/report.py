"""After a sweep: honest closing statuses, per-trial artifacts, and the sweep's table and plot.

ASHA ends a trial's function abruptly, so a trial cannot close its own MLflow run. The
driver does it here, from Tune's results: FAILED for errored trials, FINISHED otherwise,
with a `raylg.stopped_early` tag for those ASHA stopped. Each child run gets the best
student's weights (safetensors, from the best Ray checkpoint) and its learning curves; the
parent gets the summary table and best val top-1 against beta per student.
"""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from raylg.tracking import STOPPED_EARLY, Tracker

CLOSED = "raylg.closed"
COLUMNS = ("trial", "student", "beta", "best_val_top1", "epochs", "stopped_early", "status")


def _trial_id(result) -> str | None:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return tid
    m = re.search(r"_([0-9a-f]{5}_\d{5})_", Path(str(result.path)).name)
    return m.group(1) if m else None


def summarize(sweep, grid) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        has = df is not None and len(df) and "val/top1" in df
        epochs = int(df["epochs_done"].max()) if has else 0
        cfg = sweep.trial_config(result.config or {})
        rows.append({
            "trial": _trial_id(result),
            "student": cfg.model.name,
            "beta": cfg.guidance.locality.beta,
            "best_val_top1": float(df["val/top1"].max()) if has else float("nan"),
            "epochs": epochs,
            "stopped_early": result.error is None and epochs < sweep.max_t,
            "status": "FAILED" if result.error is not None else "FINISHED",
            "_best_checkpoint": _best_checkpoint(result, df) if has else None,
            "_curves": df[[c for c in ("epochs_done", "val/top1", "train/ce", "train/lg") if c in df]] if has else None,
        })
    return sorted(rows, key=lambda r: (r["student"], r["beta"], r["trial"] or ""))


def _best_checkpoint(result, df):
    """The trial's best retained checkpoint: Tune's own (in-process trials) or the Ray Train
    run's, whose path TuneReportCallback put in the metrics."""
    if result.best_checkpoints:
        return max(result.best_checkpoints, key=lambda cm: cm[1].get("val/top1", float("-inf")))[0]
    if "checkpoint_path" not in df:
        return None
    with_ckpt = df[df["checkpoint_path"].notna()]
    if with_ckpt.empty:
        return None
    from ray.train import Checkpoint

    path = str(with_ckpt.loc[with_ckpt["val/top1"].idxmax(), "checkpoint_path"])
    return Checkpoint(path, filesystem=result.filesystem)


def _student_weights(checkpoint, out: Path) -> Path | None:
    """The student alone (no aligners or other guidance heads) from a task checkpoint."""
    try:
        with checkpoint.as_directory() as d:
            state = load_file(str(Path(d) / "model.safetensors"))
    except (OSError, FileNotFoundError):
        return None
    save_file({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}, str(out))
    return out


def _curve_png(row: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = row["_curves"]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(df["epochs_done"], df["val/top1"], marker="o")
    ax[0].set(xlabel="epoch", ylabel="val top-1 (%)", title=f"{row['student']} beta={row['beta']}")
    for col in ("train/ce", "train/lg"):
        if col in df:
            ax[1].plot(df["epochs_done"], df[col], label=col)
    ax[1].set(xlabel="epoch", ylabel="loss")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _beta_png(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for student in sorted({r["student"] for r in rows}):
        pts = sorted((r["beta"], r["best_val_top1"]) for r in rows if r["student"] == student and r["status"] != "FAILED")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=student)
    ax.set(xlabel="beta (LG weight)", ylabel="best val top-1 (%)", title="best val top-1 vs beta")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'trial':13s} {'student':24s} {'beta':>5s} {'best val top-1':>14s} {'epochs':>6s} {'stopped early':>13s} {'status':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['trial'] or '?':13s} {r['student']:24s} {r['beta']:5g} {r['best_val_top1']:14.2f} {r['epochs']:6d} "
                     f"{'yes' if r['stopped_early'] else 'no':>13s} {r['status']:>8s}")
    return "\n".join(lines)


def finish(sweep, grid, tracker: Tracker, experiment_id: str, parent_id: str) -> list[dict[str, Any]]:
    rows = summarize(sweep, grid)
    runs = tracker.trial_runs(experiment_id, parent_id)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for row in rows:
            run = runs.get(row["trial"])
            if run is None:
                continue
            run_id = run.info.run_id
            if run.data.tags.get(CLOSED) != "1":
                if row["_best_checkpoint"]:
                    w = _student_weights(row["_best_checkpoint"], tmp / "student.safetensors")
                    if w is not None:
                        tracker.client.log_artifact(run_id, str(w))
                if row["_curves"] is not None:
                    tracker.client.log_artifact(run_id, str(_curve_png(row, tmp / "curves.png")))
            tracker.set_tags(run_id, {STOPPED_EARLY: str(row["stopped_early"]).lower(), CLOSED: "1",
                                      "raylg.best_val_top1": f"{row['best_val_top1']:.4f}"})
            tracker.log_metrics(run_id, {"best/val/top1": row["best_val_top1"], "epochs_run": row["epochs"]}, step=row["epochs"])
            tracker.close(run_id, row["status"])
        text = table(rows)
        tracker.client.log_text(parent_id, text + "\n", "summary.txt")
        csv = io.StringIO()
        csv.write(",".join(COLUMNS) + "\n")
        for r in rows:
            csv.write(",".join(str(r[c]) for c in COLUMNS) + "\n")
        tracker.client.log_text(parent_id, csv.getvalue(), "summary.csv")
        if any(r["status"] != "FAILED" for r in rows):
            tracker.client.log_artifact(parent_id, str(_beta_png(rows, tmp / "val_top1_vs_beta.png")))
    tracker.close(parent_id, "FINISHED")
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
