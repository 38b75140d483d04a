"""The verdict of a sweep: per arm and setting, the mean ± sample std over seeds, and the
paired difference against the baseline arm.

A setting is one value of every swept field other than the arm and the seed. Only trials that
ran to the end count: a trial ASHA stopped early, or one that failed, is counted apart and
never averaged as if it had finished. The paired difference pairs each seed of an arm with the
same seed of the baseline arm in the same setting, on test top-1 when every paired trial has
it (the best-val checkpoint on the dataset's test split), else on best val top-1.

Everything here is a function of the trials' rows (raylg.ray.report.summarize), so a resumed
sweep, or a test, recomputes the same verdict from the same table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

VAL, TEST = "best_val_top1", "test_top1"


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def completed(row: dict[str, Any]) -> bool:
    return row["status"] == "FINISHED" and not row["stopped_early"]


def verdict(rows: list[dict[str, Any]], fields: list[str], baseline_arm: str | None,
            arm_order: list[str] | None = None) -> list[dict[str, Any]]:
    """One dict per (arm, setting), in arm order then setting order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("arm"), tuple(r.get(f) for f in fields)), []).append(r)
    order = {a: i for i, a in enumerate(arm_order or [])}
    out = []
    for (arm, setting), trials in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], len(order)), str(kv[0][0]),
                                                                          [str(v) for v in kv[0][1]])):
        done = [r for r in trials if completed(r)]
        val, test = _finite(r[VAL] for r in done), _finite(r.get(TEST) for r in done)
        v = {"arm": arm, **dict(zip(fields, setting)), "n": len(done),
             "stopped_early": sum(r["status"] == "FINISHED" and r["stopped_early"] for r in trials),
             "failed": sum(r["status"] == "FAILED" for r in trials),
             "seeds": sorted(r.get("seed") for r in done if r.get("seed") is not None)}
        v["val_mean"], v["val_std"] = _mean_std(val)
        v["test_mean"], v["test_std"] = _mean_std(test) if len(test) == len(done) else (math.nan, math.nan)
        v.update(_paired(done, groups.get((baseline_arm, setting), []), arm == baseline_arm or baseline_arm is None))
        out.append(v)
    return out


def _paired(done: list[dict], baseline: list[dict], skip: bool) -> dict[str, Any]:
    empty = {"delta_on": None, "delta_n": 0, "delta_mean": math.nan, "delta_min": math.nan, "delta_max": math.nan, "deltas": {}}
    if skip:
        return empty
    base = {r.get("seed"): r for r in baseline if completed(r) and r.get("seed") is not None}
    pairs = [(r, base[r.get("seed")]) for r in done if r.get("seed") in base]
    if not pairs:
        return empty
    on = TEST if all(len(_finite([a.get(TEST), b.get(TEST)])) == 2 for a, b in pairs) else VAL
    deltas = {a["seed"]: float(a[on]) - float(b[on]) for a, b in pairs}
    d = list(deltas.values())
    return {"delta_on": on, "delta_n": len(d), "delta_mean": statistics.mean(d), "delta_min": min(d), "delta_max": max(d),
            "deltas": deltas}


# ---------------------------------------------------------------------------------------
# rendering


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _delta(v: dict[str, Any]) -> str:
    if not v["delta_n"]:
        return "–"
    return f"{v['delta_mean']:+.2f} ({v['delta_min']:+.2f}..{v['delta_max']:+.2f}, n={v['delta_n']})"


def _cells(v: dict[str, Any], fields: list[str]) -> list[str]:
    return ([str(v["arm"])] + [str(v[f]) for f in fields] +
            [str(v["n"]), _pm(v["val_mean"], v["val_std"]), _pm(v["test_mean"], v["test_std"]), _delta(v),
             str(v["stopped_early"]), str(v["failed"])])


def _header(fields: list[str], baseline_arm: str | None, verdicts: list[dict]) -> list[str]:
    on = next((v["delta_on"] for v in verdicts if v["delta_on"]), TEST)
    what = "test" if on == TEST else "best val"
    return (["arm"] + fields + ["n", "best val top-1", "test top-1", f"Δ {what} vs {baseline_arm or '–'} (min..max)",
                                "stopped early", "failed"])


def text(verdicts: list[dict], fields: list[str], baseline_arm: str | None) -> str:
    head = _header(fields, baseline_arm, verdicts)
    body = [_cells(v, fields) for v in verdicts]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), "-" * len(line(head))] + [line(r) for r in body])


def markdown(verdicts: list[dict], fields: list[str], baseline_arm: str | None) -> str:
    head = _header(fields, baseline_arm, verdicts)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(v, fields)) + " |" for v in verdicts]
    return "\n".join(lines) + "\n\nmean ± sample std over the seeds that ran to the end (n); Δ pairs each seed with the " \
                              "same seed of the baseline arm in the same setting.\n"


def to_csv(verdicts: list[dict], fields: list[str]) -> str:
    cols = ["arm", *fields, "n", "val_mean", "val_std", "test_mean", "test_std", "delta_on", "delta_n", "delta_mean",
            "delta_min", "delta_max", "stopped_early", "failed"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for v in verdicts:
        w.writerow(["" if isinstance(v[c], float) and math.isnan(v[c]) else v[c] for c in cols])
    return buf.getvalue()


def to_json(verdicts: list[dict], rows: list[dict], fields: list[str], baseline_arm: str | None) -> str:
    clean = lambda x: None if isinstance(x, float) and math.isnan(x) else x
    return json.dumps({"fields": fields, "baseline_arm": baseline_arm,
                       "verdict": [{k: clean(v) for k, v in d.items()} for d in verdicts],
                       "trials": [{k: clean(v) for k, v in r.items()} for r in rows]}, indent=2, default=str)


def plot(verdicts: list[dict], rows: list[dict], fields: list[str], path: Path) -> Path:
    """Per setting a panel; per arm the seeds as points, the mean as a bar with its std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(tuple(v[f] for f in fields) for v in verdicts))
    arms = list(dict.fromkeys(v["arm"] for v in verdicts))
    metric = TEST if all(not math.isnan(v["test_mean"]) for v in verdicts if v["n"]) else VAL
    fig, axes = plt.subplots(1, len(settings), figsize=(1.2 + 1.1 * len(arms) * len(settings), 3.8), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for i, arm in enumerate(arms):
            pts = _finite(r.get(metric) for r in rows if r.get("arm") == arm and completed(r)
                          and tuple(r.get(f) for f in fields) == setting)
            if not pts:
                continue
            mean, std = _mean_std(pts)
            ax.bar(i, mean, yerr=0 if math.isnan(std) else std, color=f"C{i}", alpha=0.55, capsize=4)
            ax.scatter([i] * len(pts), pts, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(arms)), [str(a) for a in arms], rotation=30, ha="right")
        ax.set_title(", ".join(f"{f.rsplit('.', 1)[-1]} {v}" for f, v in zip(fields, setting)) or "all trials", fontsize=9)
        ax.set_ylabel(("test" if metric == TEST else "best val") + " top-1 (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
