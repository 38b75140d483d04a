"""After a sweep: honest closing statuses, per-trial artifacts, the trials' table and the verdict.

ASHA ends a trial's function abruptly, so a trial cannot close its own MLflow run. The
driver does it here, from Tune's results: FAILED for errored trials, FINISHED otherwise,
with a `raylg.stopped_early` tag for those ASHA stopped. Each child run gets the best
student's weights (safetensors, from the best Ray checkpoint) and its learning curves; the
parent gets the trials' table, best val top-1 against beta per student and, when the sweep
has arms or seeds, the verdict (raylg.ray.verdict) as Markdown, CSV, JSON and a plot, which
are also written to the sweep's directory. The best trial that ran to the end (by the sweep's
metric) has its student registered in the model registry as `raylg-<sweep name>` (register_best).
"""

from __future__ import annotations

import csv
import io
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from raylg.files import write_text_atomic
from raylg.ray import verdict as verdict_lib
from raylg.ray.spec import ARM, SEED
from raylg.tracking import STOPPED_EARLY, Tracker

CLOSED = "raylg.closed"
REGISTERED = "raylg.registered_model"  # on the parent run: NAME/VERSION of the registered best student
STUDENT = "student.safetensors"  # each child run's best student (the registered artifact)
COLUMNS = ("trial", "student", "beta", "best_val_top1", "test_top1", "epochs", "stopped_early", "status")
VERDICT = "verdict"  # verdict.md / .csv / .json / .png in the sweep's directory and on the parent run


def _trial_id(result) -> str | None:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return tid
    m = re.search(r"_([0-9a-f]{5}_\d{5})_", Path(str(result.path)).name)
    return m.group(1) if m else None


def first_error_line(error) -> str:
    """The line of a trial's error that says what went wrong (the exception's own message, not
    the Ray wrappers or traceback frames around it)."""
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    noise = ("File ", "Traceback", "^", "~", "ray::", "The above exception", "During handling")
    msgs = [l for l in lines if not l.startswith(noise)
            and ("Error" in l.split(":")[0] or "Exception" in l.split(":")[0] or "Loss" in l.split(":")[0])]
    return (msgs[-1] if msgs else (lines[-1] if lines else type(error).__name__))[:400]


def summarize(sweep, grid) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        has = df is not None and len(df) and "val/top1" in df
        epochs = int(df["epochs_done"].max()) if has else 0
        params = result.config or {}
        cfg = sweep.trial_config(params)
        last = result.metrics or {}
        error = result.error
        rows.append({
            "trial": _trial_id(result),
            "arm": params.get(ARM), "seed": params.get(SEED), **{k: params.get(k) for k in sweep.swept},
            "student": cfg.model.name,
            "beta": cfg.guidance.locality.beta,
            "best_val_top1": float(df["val/top1"].max()) if has else float("nan"),
            "test_top1": float(last["test/top1"]) if isinstance(last.get("test/top1"), (int, float)) else float("nan"),
            "epochs": epochs,
            "stopped_early": error is None and epochs < sweep.max_t,
            "status": "FAILED" if error is not None else "FINISHED",
            "error": first_error_line(error) if error is not None else "",
            "log": _error_log(result) if error is not None else "",
            "_best_checkpoint": _best_checkpoint(result, df) if has else None,
            "_metric": _best(df, sweep.spec.metric, sweep.mode) if has and sweep.spec.metric in df else float("nan"),
            "_curves": df[[c for c in ("epochs_done", "val/top1", "train/ce", "train/lg") if c in df]] if has else None,
        })
    arm_order = {a: i for i, a in enumerate(sweep.spec.arms)}
    return sorted(rows, key=lambda r: (arm_order.get(r["arm"], 0), [str(r[k]) for k in sweep.swept], r["student"], r["beta"],
                                       r["seed"] if r["seed"] is not None else 0, r["trial"] or ""))


def _best(df, metric: str, mode: str) -> float:
    col = df[metric].dropna()
    return float(col.max() if mode == "max" else col.min()) if len(col) else float("nan")


def _error_log(result) -> str:
    path = str(result.path)
    local = Path(path) / "error.txt"
    return str(local) if local.is_file() else path


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


def table(rows: list[dict[str, Any]], fields: list[str] = (), arms: bool = False, seeds: bool = False) -> str:
    """The trials, one line each: arm, seed and every swept field, then the figures."""
    cols = (["trial"] + (["arm"] if arms else []) + (["seed"] if seeds else []) + list(fields) +
            [c for c in ("student", "beta") if c not in fields] + ["best val top-1", "test top-1", "epochs", "status"])

    def cell(r, c):
        if c == "best val top-1":
            return f"{r['best_val_top1']:.2f}"
        if c == "test top-1":
            return "–" if math.isnan(r["test_top1"]) else f"{r['test_top1']:.2f}"
        if c == "status":
            return "stopped early" if r["stopped_early"] else r["status"].lower()
        v = r.get(c)
        return "?" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))

    body = [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(x) for x in [c] + [b[i] for b in body]) for i, c in enumerate(cols)]
    fmt = lambda cells: "  ".join(x.ljust(w) for x, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(cols), "-" * len(fmt(cols))] + [fmt(b) for b in body])


def failures(rows: list[dict[str, Any]]) -> str:
    """One paragraph per failed trial: what it was, the first line of its error, its log."""
    out = []
    for r in rows:
        if r["status"] == "FAILED":
            what = ", ".join(f"{k} {r[k]}" for k in ("arm", "seed") if r.get(k) is not None)
            out.append(f"trial {r['trial']} FAILED{f' ({what})' if what else ''}: {r['error']}\n  log: {r['log']}")
    return "\n".join(out)


def closing_text(sweep, rows: list[dict[str, Any]]) -> str:
    """What a sweep prints at the end: the trials, the verdict (with arms or seeds), the failures."""
    parts = [table(rows, sweep.swept, bool(sweep.spec.arms), bool(sweep.spec.seeds))]
    if sweep.spec.arms or sweep.spec.seeds:
        v = verdict_lib.verdict(rows, sweep.swept, sweep.baseline_arm, list(sweep.spec.arms))
        parts.append("verdict (mean ± sample std over seeds that ran to the end):\n" +
                     verdict_lib.text(v, sweep.swept, sweep.baseline_arm))
    failed = failures(rows)
    if failed:
        parts.append(failed)
    return "\n\n".join(parts)


def write_verdict(sweep, rows: list[dict[str, Any]], out_dir: Path) -> tuple[str, list[Path]]:
    """The verdict as text (returned) and as files in out_dir: Markdown, CSV, JSON and a plot."""
    fields = sweep.swept
    v = verdict_lib.verdict(rows, fields, sweep.baseline_arm, list(sweep.spec.arms))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for suffix, content in ((".md", verdict_lib.markdown(v, fields, sweep.baseline_arm)), (".csv", verdict_lib.to_csv(v, fields)),
                            (".json", verdict_lib.to_json(v, rows, fields, sweep.baseline_arm))):
        path = out_dir / f"{VERDICT}{suffix}"
        write_text_atomic(path, content)
        files.append(path)
    if any(x["n"] for x in v):
        files.append(verdict_lib.plot(v, rows, fields, out_dir / f"{VERDICT}.png"))
    return verdict_lib.text(v, fields, sweep.baseline_arm), files


def finish(sweep, grid, tracker: Tracker, experiment_id: str, parent_id: str, out_dir: Path) -> list[dict[str, Any]]:
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
                    w = _student_weights(row["_best_checkpoint"], tmp / STUDENT)
                    if w is not None:
                        tracker.client.log_artifact(run_id, str(w))
                if row["_curves"] is not None:
                    tracker.client.log_artifact(run_id, str(_curve_png(row, tmp / "curves.png")))
            tracker.set_tags(run_id, {STOPPED_EARLY: str(row["stopped_early"]).lower(), CLOSED: "1",
                                      "raylg.best_val_top1": f"{row['best_val_top1']:.4f}"})
            tracker.log_metrics(run_id, {"best/val/top1": row["best_val_top1"], "epochs_run": row["epochs"]}, step=row["epochs"])
            if row["error"]:
                tracker.set_tags(run_id, {"raylg.error": row["error"]})
            tracker.close(run_id, row["status"])
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        text = table(clean, sweep.swept, bool(sweep.spec.arms), bool(sweep.spec.seeds))
        tracker.client.log_text(parent_id, text + "\n", "summary.txt")
        cols = ["trial", "arm", "seed", *sweep.swept, *[c for c in COLUMNS[1:] if c not in sweep.swept], "error"]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(cols)
        for r in clean:
            writer.writerow([r.get(c) for c in cols])
        tracker.client.log_text(parent_id, buf.getvalue(), "summary.csv")
        if any(r["status"] != "FAILED" for r in rows):
            tracker.client.log_artifact(parent_id, str(_beta_png(rows, tmp / "val_top1_vs_beta.png")))
        if sweep.spec.arms or sweep.spec.seeds:
            vtext, files = write_verdict(sweep, clean, out_dir)
            for f in files:
                tracker.client.log_artifact(parent_id, str(f))
            tracker.client.log_text(parent_id, vtext + "\n", f"{VERDICT}.txt")
    version = register_best(sweep, rows, clean, tracker, runs)
    if version is not None:
        tracker.set_tags(parent_id, {REGISTERED: f"{version.name}/{version.version}"})
    tracker.close(parent_id, "FINISHED")
    return clean


def model_name(sweep) -> str:
    return f"raylg-{sweep.spec.name}"


def register_best(sweep, rows: list[dict[str, Any]], clean: list[dict[str, Any]], tracker: Tracker, runs: dict[str, Any]):
    """Register the student of the best trial that ran to the end (by the sweep's metric; ties go
    to the first in the trials' table) as a new version of `raylg-<sweep name>`, tagged with its
    arm, student, beta, seed, swept fields, the metric and, with arms or seeds, its verdict row.
    Nothing when no trial ran to the end or the best has no weights logged. Returns the ModelVersion."""
    import json

    done = [(r, c) for r, c in zip(rows, clean) if verdict_lib.completed(r) and math.isfinite(r["_metric"])
            and r["trial"] in runs and STUDENT in {a.path for a in tracker.client.list_artifacts(runs[r["trial"]].info.run_id)}]
    if not done:
        return None
    sign = 1 if sweep.mode == "max" else -1
    best, best_clean = max(done, key=lambda rc: sign * rc[0]["_metric"])  # max() keeps the first of equals
    run_id = runs[best["trial"]].info.run_id
    tags = {"sweep": sweep.spec.name, "trial": best["trial"], "student": best["student"], "beta": best["beta"],
            "metric": sweep.spec.metric, sweep.spec.metric: f"{best['_metric']:.4f}",
            **({"arm": best["arm"]} if best.get("arm") is not None else {}),
            **({"seed": best["seed"]} if best.get("seed") is not None else {}),
            **{k: best.get(k) for k in sweep.swept}}
    setting = ""
    if sweep.spec.arms or sweep.spec.seeds:
        v = verdict_lib.verdict(clean, sweep.swept, sweep.baseline_arm, list(sweep.spec.arms))
        row = next((x for x in v if x["arm"] == best.get("arm") and all(x[f] == best_clean.get(f) for f in sweep.swept)), None)
        if row is not None:
            tags["verdict"] = json.dumps({k: (None if isinstance(x, float) and math.isnan(x) else x) for k, x in row.items()},
                                         default=str)
            setting = " | verdict: " + verdict_lib.text([row], sweep.swept, sweep.baseline_arm).splitlines()[-1]
    what = ", ".join(f"{k} {tags[k]}" for k in ("arm", "student", "beta", "seed") if k in tags)
    return tracker.register(
        model_name(sweep), run_id, STUDENT, tags,
        description=f"best trial of sweep {sweep.spec.name} by {sweep.spec.metric} ({best['_metric']:.2f}): {what}{setting}",
        model_description=f"The best student of each raylg sweep named {sweep.spec.name!r} (by its metric, among trials that "
                          f"ran to the end): the student's weights alone as safetensors (no pickle), with the trial's arm, "
                          f"student, beta and verdict row as version tags.")
