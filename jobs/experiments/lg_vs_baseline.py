"""Baseline vs LG vs LG+DRLoc (and logit KD, DeiT's distillation token) on small Fashion-MNIST.

    OMP_NUM_THREADS=1 python jobs/experiments/lg_vs_baseline.py           # DeiT-Tiny, 5 arms (est. ~6.5 h on one CPU core)
    OMP_NUM_THREADS=1 python jobs/experiments/lg_vs_baseline.py --smoke   # 1 seed, 50/class, 4 batches, every arm (est. ~10 min)
    python jobs/experiments/lg_vs_baseline.py --arms baseline lg lg_drloc --out runs/experiments/deit_tiny   # README table 1
    python jobs/experiments/lg_vs_baseline.py --set model.name=deit_micro_patch4_32 --set run.precision=fp32 \
        --set optim.lr=2e-3 --out runs/experiments/deit_micro                                   # README table 2

The student is DeiT-Tiny at native 32px (deit_tiny_patch4_32: dim 192, 12 blocks, 3 heads,
patch 4, 5.4M parameters) with the paper's AdamW lr 5e-4, under bf16 autocast (1.3x faster
than fp32 on a CPU with AVX512-BF16); --set overrides any field of every student arm. On a
CPU shared with other work, OMP_NUM_THREADS=1 is much faster than torch's default threads
(idle threads spin at every parallel region while their core is taken).

Per (per_class, seed): one ResNet-20 teacher is trained on that subset (jobs/configs/
teacher-fashion-small.yaml), then every arm trains the same student with the same recipe,
epochs and seed (jobs/configs/fashion-small.yaml); arms differ only in their guidance terms.
Seed s sets both the subset drawn (data.split_seed) and the run's randomness (run.seed), so
the spread covers which images were drawn as well as initialisation and batch order.

Writes to --out: runs/ (every run directory), results.json (one row per run), table.md (mean
± sample std over seeds of best val top-1 and of test top-1 on the full 10k test set), and
lg_vs_baseline.png; prints the table. Finished runs are reused when the script is run again
with the same settings (even from a moved out dir), so an interrupted experiment continues
where it stopped, and parallel invocations over disjoint seeds or sizes can share one --out
and be gathered by a last call with them all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from raylg import config as config_lib, teacher as teacher_lib  # noqa: E402
from raylg.fit import fit  # noqa: E402

STUDENT = ROOT / "jobs" / "configs" / "fashion-small.yaml"
TEACHER = ROOT / "jobs" / "configs" / "teacher-fashion-small.yaml"

# arm -> (label, overrides). Arms with a teacher but no LG keep beta = 0 (LG computed, weighted 0).
ARMS: dict[str, tuple[str, dict]] = {
    "baseline": ("baseline", {}),
    "lg": ("LG (β 2.5)", {"guidance.locality.beta": 2.5}),
    "lg_drloc": ("LG + DRLoc (λ 0.5)", {"guidance.locality.beta": 2.5, "guidance.drloc.weight": 0.5}),
    "kd": ("logit KD (τ 4, w 1)", {"guidance.locality.beta": 0.0, "guidance.kd.weight": 1.0}),
    "dist": ("distillation token (w 1)", {"guidance.locality.beta": 0.0, "guidance.distill_token.weight": 1.0}),
    "drloc": ("DRLoc (λ 0.5)", {"guidance.drloc.weight": 0.5}),
    "all": ("LG + DRLoc + KD + dist token", {"guidance.locality.beta": 2.5, "guidance.drloc.weight": 0.5,
                                             "guidance.kd.weight": 1.0, "guidance.distill_token.weight": 1.0}),
}
DEFAULT_ARMS = ["baseline", "lg", "lg_drloc", "kd", "dist"]
# DeiT-Tiny at 32px with the paper's AdamW lr (5e-4; at 2e-3, the CPU micro-student's lr, its
# 12 blocks barely learned in 15 epochs); bf16 autocast. Applied before --set.
STUDENT_SETS = {"model.name": "deit_tiny_patch4_32", "run.precision": "bf16", "optim.lr": 5e-4}
DEFAULT_EPOCHS = {50: 40, 500: 4}  # ~600 and ~625 optimizer steps at batch 32
NEEDS_TEACHER = {"lg", "lg_drloc", "kd", "dist", "all"}


def _warmup(epochs: int) -> float:
    return 0.05 * epochs  # 5% of the run's steps, whatever its length


def _done(run_dir: Path) -> dict | None:
    p = run_dir / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _run(cfg, run_dir: Path, log) -> tuple[dict, float, bool]:
    """(summary, seconds, reused). A finished run with the same config is reused."""
    summary = _done(run_dir)
    if summary is not None and config_lib.diff(config_lib.load(run_dir / "config.yaml"), cfg, ignore=("run.progress", "run.out_dir")) == {}:
        return summary, json.loads((run_dir / "timing.json").read_text())["seconds"], True
    t0 = time.perf_counter()
    summary = fit(cfg, run_dir)
    seconds = time.perf_counter() - t0
    (run_dir / "timing.json").write_text(json.dumps({"seconds": seconds}))
    log(f"  {run_dir.name}: best val {summary['best']['val/top1']:.2f} test {summary.get('test/top1', float('nan')):.2f} "
        f"({seconds:.0f}s)")
    return summary, seconds, False


def teacher_for(per_class: int, seed: int, epochs: int, out: Path, extra: dict, log) -> tuple[str, dict]:
    cfg = config_lib.load(TEACHER, {"data.per_class": per_class, "data.split_seed": seed, "run.seed": seed,
                                    "schedule.epochs": epochs, "run.name": "teacher", "run.out_dir": str(out), **extra})
    run_dir = out / "teacher"
    summary, seconds, reused = _run(cfg, run_dir, log)
    weights = run_dir / "teacher.safetensors"
    if not weights.is_file():
        teacher_lib.publish(run_dir)
    return str(weights), {"best_val_top1": summary["best"]["val/top1"], "test_top1": summary.get("test/top1"),
                          "seconds": seconds, "reused": reused}


def student(arm: str, per_class: int, seed: int, epochs: int, teacher: str, out: Path, overrides: dict, log) -> dict:
    sets = {"data.per_class": per_class, "data.split_seed": seed, "run.seed": seed, "schedule.epochs": epochs,
            "schedule.warmup_epochs": _warmup(epochs), "run.name": arm, "run.out_dir": str(out), **overrides}
    sets.update(ARMS[arm][1])
    if arm in NEEDS_TEACHER:
        sets["teacher.path"] = teacher
    cfg = config_lib.load(STUDENT, sets)
    summary, seconds, reused = _run(cfg, out / arm, log)
    return {"best_val_top1": summary["best"]["val/top1"], "best_epoch": summary["best"]["epoch"] + 1,
            "test_top1": summary.get("test/top1"), "seconds": seconds, "reused": reused}


def _stat(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(rows: list[dict], arms: list[str], sizes: list[int]) -> str:
    head = "| arm | " + " | ".join(f"{n}/class best val top-1 | {n}/class test top-1" for n in sizes) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(sizes))]
    for arm in ["teacher", *arms]:
        label = "teacher: ResNet-20 (reference)" if arm == "teacher" else ARMS[arm][0]
        cells = []
        for n in sizes:
            sel = [r for r in rows if r["arm"] == arm and r["per_class"] == n]
            cells += [_stat([r["best_val_top1"] for r in sel]), _stat([r["test_top1"] for r in sel if r["test_top1"] is not None])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], arms: list[str], sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.8), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for i, arm in enumerate(arms):
            vals = [r["test_top1"] for r in rows if r["arm"] == arm and r["per_class"] == n and r["test_top1"] is not None]
            if not vals:
                continue
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            ax.bar(i, statistics.mean(vals), yerr=sd, color=f"C{i}", alpha=0.6, capsize=4)
            ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(arms)), [ARMS[a][0].split(" (")[0] for a in arms], rotation=30, ha="right")
        lo = min((r["test_top1"] for r in rows if r["per_class"] == n and r["test_top1"] is not None), default=0)
        ax.set_ylim(max(0, lo - 5), None)
        ax.set_title(f"Fashion-MNIST, {n} images/class")
        ax.set_ylabel("test top-1 (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/experiments/deit_tiny")
    p.add_argument("--per-class", type=int, nargs="+", default=[50, 500])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", nargs="+", default=[f"{k}={v}" for k, v in DEFAULT_EPOCHS.items()],
                   help="PER_CLASS=EPOCHS for students and teachers alike (default: 50=40 500=4)")
    p.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override for every student arm, after the defaults {STUDENT_SETS} (e.g. model.name=deit_micro_patch4_32)")
    p.add_argument("--smoke", action="store_true", help="1 seed, 50/class, 1 epoch of 4 batches, every arm")
    args = p.parse_args(argv)
    epochs = {int(k): int(v) for k, v in (e.split("=") for e in args.epochs)}
    overrides = {**STUDENT_SETS, **config_lib.parse_set(args.overrides)}
    teacher_extra = {}
    if args.smoke:
        args.per_class, args.seeds, args.arms, epochs = [50], [1], list(ARMS), {50: 1}
        overrides["run.max_train_batches"] = teacher_extra["run.max_train_batches"] = 4
    missing = [n for n in args.per_class if n not in epochs]
    if missing:
        p.error(f"--epochs has no entry for per_class {missing}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.txt"

    def log(msg: str) -> None:
        print(msg, flush=True)
        with log_path.open("a") as f:
            f.write(msg + "\n")

    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:  # seed outermost: a cut-short experiment still has every arm and size
        for n in args.per_class:
            d = out / "runs" / f"pc{n}-seed{seed}"
            log(f"per_class {n}, seed {seed}: teacher, then {', '.join(args.arms)} ({epochs[n]} epochs)")
            weights, trow = teacher_for(n, seed, epochs[n], d, teacher_extra, log)
            rows.append({"arm": "teacher", "per_class": n, "seed": seed, "epochs": epochs[n], **trow})
            for arm in args.arms:
                rows.append({"arm": arm, "per_class": n, "seed": seed, "epochs": epochs[n],
                             **student(arm, n, seed, epochs[n], weights, d, overrides, log)})
            (out / "results.json").write_text(json.dumps(rows, indent=2))
    wall = time.perf_counter() - t0
    text = table(rows, args.arms, args.per_class)
    run_seconds = sum(r["seconds"] for r in rows)
    meta = {"seeds": args.seeds, "epochs": epochs, "arms": args.arms, "wall_seconds": wall, "run_seconds": run_seconds,
            "student": config_lib.flatten(config_lib.load(STUDENT, overrides)), "command": " ".join(sys.argv)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "table.md").write_text(text + "\n")
    plot(rows, args.arms, args.per_class, out / "lg_vs_baseline.png")
    reused = sum(r["reused"] for r in rows)
    log(f"\n{text}\n\nmean ± sample std over seeds {args.seeds}; epochs {epochs}; {len(rows)} runs "
        f"({reused} finished earlier and reused) took {run_seconds / 60:.1f} min summed; this invocation {wall / 60:.1f} min wall")
    log(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'lg_vs_baseline.png'}")
    return text



if __name__ == "__main__":
    main()
