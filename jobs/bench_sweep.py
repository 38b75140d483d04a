"""What Ray costs a trial: steady-state epoch time in a 1-worker Ray Train run vs the plain
in-process loop (same config), the fixed cost of starting and finishing a trial with where
those seconds go, and a sweep's wall time against the sum of its trials' training times.

    python jobs/bench_sweep.py                          # digits, deit_micro_patch4_32 + LG, 3 epochs, 12-trial sweep
    python jobs/bench_sweep.py --epochs 5 --trials 4 --set model.name=pvt_v2_micro
    python jobs/bench_sweep.py --skip-sweep             # the breakdowns alone
    python jobs/bench_sweep.py --skip-sweep --compare-defaults   # raylg's Train-run start against Ray's defaults
    python jobs/bench_sweep.py --sweep-workers 1 --trials 4   # a sweep of 1-worker Train-run trials

Starts its own local Ray (or joins RAY_ADDRESS). Epoch times come from the runs'
metrics.jsonl (the loop's own clock); the breakdowns from each run's timing.json
(raylg.timing: wall-clock marks taken in the trial's driver, the Train worker and fit).
A ResNet-20 teacher is trained first (a few seconds) so the trials pay a teacher load as LG
trials do; `--no-teacher` runs the baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = Path(__file__).resolve().parent / "configs" / "digits-tiny.yaml"
TEACHER = Path(__file__).resolve().parent / "configs" / "teacher-digits-tiny.yaml"

# what happens between a mark and the one before it
STAGES = {
    "trial_start": "imports: Tune, MLflow, the sweep module (trial process)",
    "trainer_built": "trial driver: config, tags, the Train run's trainer object",
    "process_start": "Ray: controller, placement group, worker process",
    "import_start": "worker process up to raylg's import (Ray's worker setup; torch too in a TorchTrainer)",
    "imported": "imports: raylg, torch, timm, ray.train",
    "loop_start": "Ray: worker group ready, loop called",
    "fit_start": "loop: session, teacher fetch, MLflow child run",
    "data": "dataset build",
    "teacher": "teacher load (sha256, card, weights)",
    "task": "student + guidance heads",
    "tracking": "MLflow: params, data.json, dataset inputs",
    "loaders": "device, optimizer, loaders",
    "compile": "run.compile: torch.compile of forward + backward",
    "finish": "best student export + test eval",
    "fit_end": "summary.json",
    "returned": "Ray: last report, teardown until fit() returns",
    "trial_end": "Ray: last report, teardown until fit() returns",
}


def epoch_times(run_dir: Path) -> list[float]:
    return [json.loads(l)["epoch_time_s"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def breakdown(marks: list[tuple[str, float]], epochs: list[float]) -> tuple[list[tuple[str, float]], float, float]:
    """(stage rows, fixed seconds, total seconds): epochs' marks collapse into one row, split into the
    loop's epoch time (training) and what lies between epochs (checkpoints, reports)."""
    from raylg import timing

    rows: list[tuple[str, float]] = []
    between = 0.0
    for name, dt in timing.steps(sorted(marks, key=lambda m: m[1])):
        if name.startswith("epoch_"):
            between += dt
        else:
            rows.append((STAGES.get(name, name), dt))
    train = sum(epochs)
    rows.insert(next((i for i, (n, _) in enumerate(rows) if n == STAGES["finish"]), len(rows)),
                ("between epochs: checkpoints, reports, MLflow metrics", max(0.0, between - train)))
    total = marks[-1][1] - min(t for _, t in marks)
    return rows, total - train, total


def show(title: str, marks, epochs) -> float:
    rows, fixed, total = breakdown(marks, epochs)
    print(f"\n{title}: {total:.1f} s wall, {sum(epochs):.1f} s in {len(epochs)} epochs, fixed cost {fixed:.1f} s")
    for name, dt in rows:
        print(f"  {dt:6.2f} s  {name}")
    return fixed


def ray_defaults(trainer):
    """The same run as Ray's defaults start it: a TorchTrainer (gloo process group, torch imported by the
    controller too); main() runs it with Ray's 2 s poll interval (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)."""
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(trainer.train_loop_per_worker, train_loop_config=trainer.train_loop_config,
                        scaling_config=trainer.scaling_config, run_config=trainer.run_config,
                        torch_config=TorchConfig(backend="gloo"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--trials", type=int, default=12, help="trials in the sweep part")
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--no-teacher", action="store_true", help="baseline trials (no teacher to load)")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--sweep-workers", type=int, default=0, choices=(0, 1),
                   help="the sweep's resources.workers: 0 = trials in Tune's processes, 1 = a 1-worker Train run each")
    p.add_argument("--train-runs", type=int, default=3,
                   help="1-worker Train runs, one after another on the same Ray (a sweep's later trials)")
    p.add_argument("--compare-defaults", action="store_true",
                   help="alternate each Train run with one on Ray's defaults (TorchTrainer with a gloo process group, "
                        "the controller polling every 2 s): the before/after of raylg's start-up settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    import os

    import ray
    import torch

    from raylg import config as config_lib, teacher as teacher_lib, timing
    from raylg.fit import fit
    from raylg.ray import spec as spec_lib, sweep as sweep_lib
    from raylg.ray.trainer import POLL_INTERVAL_ENV, make_trainer

    tmp = Path(tempfile.mkdtemp(prefix="raylg-bench-"))
    torch.set_num_threads(1)  # what a 1-CPU Ray worker gets
    over = {"schedule.epochs": args.epochs, "schedule.warmup_epochs": 1, "run.progress": False, "data.num_workers": 0}
    if not args.no_teacher:
        tcfg = config_lib.load(TEACHER, {"run.out_dir": str(tmp), "run.name": "teacher", "run.progress": False,
                                         "schedule.epochs": 2, "run.max_train_batches": 5})
        fit(tcfg, tmp / "teacher")
        weights, _ = teacher_lib.publish(tmp / "teacher")
        over["teacher.path"] = str(weights)
    over.update(config_lib.parse_set(args.overrides))
    cfg = config_lib.load(CONFIG, over)
    print(f"{cfg.model.name} on {cfg.data.name}, {args.epochs} epochs, batch {cfg.optim.batch_size}, 1 thread each, "
          f"{'LG with a ResNet-20 teacher' if cfg.teacher.path else 'no teacher'}; load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores")

    t0 = time.time()
    fit(cfg, tmp / "plain")
    plain = epoch_times(tmp / "plain")
    plain_fixed = show("plain loop (fit in this process)", [("start", t0), *timing.read(tmp / "plain" / "timing.json")], plain)

    if ray.is_initialized() is False:
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=True, log_to_driver=False)
    variants = ["raylg"] + (["Ray's defaults"] if args.compare_defaults else [])
    fixed_costs: dict[str, list[float]] = {v: [] for v in variants}
    rayt = []
    for i in range(args.train_runs):
        for variant in variants:  # alternating, so drifting load hits both alike
            run_dir = tmp / f"ray{i}-{'raylg' if variant == 'raylg' else 'defaults'}"
            trainer = make_trainer({"cfg": config_lib.flatten(cfg), "run_dir": str(run_dir), "tracking": None},
                                   name=run_dir.name, storage=str(tmp / "store"), workers=1, cpus_per_worker=1,
                                   gpus_per_worker=0, failures=0)
            # the controller reads the poll interval when fit() starts it: Ray's 2 s for the defaults' run
            poll = {} if variant == "raylg" else {POLL_INTERVAL_ENV: "2"}
            with mock.patch.dict(os.environ, poll):
                (trainer if variant == "raylg" else ray_defaults(trainer)).fit()
            returned = time.time()
            epochs = epoch_times(run_dir)
            rayt += (epochs[1:] or epochs) if variant == "raylg" else []
            fixed_costs[variant].append(show(
                f"1-worker Train run ({variant}), run {i + 1} of {args.train_runs} on this Ray (load average "
                f"{os.getloadavg()[0]:.2f})", [*timing.read(run_dir / "timing.json"), ("returned", returned)], epochs))
    steady_plain, steady_ray = statistics.median(plain[1:] or plain), statistics.median(rayt)
    print(f"\nsteady epoch, plain loop:            {steady_plain:7.2f} s  (epochs: {', '.join(f'{t:.2f}' for t in plain)})")
    print(f"steady epoch, 1-worker Train run:    {steady_ray:7.2f} s  (epochs: {', '.join(f'{t:.2f}' for t in rayt)})")
    print(f"ratio Train run / plain:             {steady_ray / steady_plain:7.3f}   (goal <= 1.05)")
    for variant, costs in fixed_costs.items():
        print(f"fixed cost, 1-worker Train run ({variant}): median {statistics.median(costs):.1f} s "
              f"({', '.join(f'{f:.1f}' for f in costs)}; goal <= 10 s)")
    print(f"fixed cost, plain loop: {plain_fixed:.1f} s")
    if args.skip_sweep:
        return ray.shutdown()

    # a sweep: wall time vs the sum of its trials' training time
    kind = "in-process" if args.sweep_workers == 0 else "1-worker Train-run"
    sweep_file = tmp / "sweep.yaml"
    sweep_file.write_text(json.dumps({
        "name": "bench", "run_config": str(CONFIG), "set": {k: v for k, v in over.items()},
        "space": {"optim.lr": {"grid": [2e-3 * (0.9 ** i) for i in range(args.trials)]}},
        "max_concurrent": args.concurrent, "asha": "off",  # no early stops: compare whole trials
        # a Train-run trial's Tune process holds 0.01 CPU beside its worker: 0.99 lets `concurrent` of them fit
        "resources": {"workers": args.sweep_workers, "cpus_per_worker": 1 if args.sweep_workers == 0 else 0.99},
        "storage": str(tmp / "sweeps")}))
    s = spec_lib.load(sweep_file)
    t0 = time.perf_counter()
    sweep_lib.run(s, log=lambda *_: None)
    sweep_wall = time.perf_counter() - t0
    dirs = sorted((tmp / "sweeps" / "bench" / "trials").iterdir())
    trial_sum = sum(sum(epoch_times(d)) for d in dirs)
    fixed, fresh, reused = [], [], []
    for d in dirs:
        marks = timing.read(d / "timing.json")
        start = min(t for n, t in marks if n in ("import_start", "trial_start"))  # a fresh process: from its imports
        marks = [m for m in marks if m[1] >= start]
        fixed.append(breakdown(marks, epoch_times(d))[1])
        (fresh if any(n == "import_start" for n, _ in marks) else reused).append((d, marks))
    for title, group in (("in a fresh process", fresh), ("in a process a finished trial left (Tune reuses it)", reused)):
        if group:
            d, marks = group[len(group) // 2]
            show(f"{kind} sweep trial {title}, {len(group)} of {len(dirs)}", marks, epoch_times(d))
    ideal = trial_sum / args.concurrent
    print(f"\n{kind} trial fixed cost (its process's imports, if any, to the trial's end, minus epochs): median "
          f"{statistics.median(fixed):.1f} s, range {min(fixed):.1f}-{max(fixed):.1f} s over {len(fixed)} trials "
          f"({len(fresh)} in fresh processes; goal <= {5 if args.sweep_workers == 0 else 10} s)")
    print(f"sweep of {len(dirs)} trials, {args.concurrent} at a time: wall {sweep_wall:.1f} s, sum of trials' epoch times "
          f"{trial_sum:.1f} s, ideal wall {ideal:.1f} s, overhead ratio wall / ideal {sweep_wall / ideal:.2f} "
          f"(per trial {(sweep_wall - ideal) * args.concurrent / len(dirs):.1f} s of slot time); load average "
          f"{os.getloadavg()[0]:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
