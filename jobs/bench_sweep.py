"""What Ray costs a trial: steady-state epoch time in a 1-worker TorchTrainer vs the plain
in-process loop (same config), the fixed cost of starting a trial, and a sweep's wall time
against the sum of its trials' training times.

    python jobs/bench_sweep.py                 # digits, deit_micro_patch4_32, 5 epochs
    python jobs/bench_sweep.py --epochs 8 --set model.name=pvt_v2_micro

Starts its own local Ray (or joins RAY_ADDRESS). Epoch times come from the runs'
metrics.jsonl (the loop's own clock, first epoch excluded: it includes warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = Path(__file__).resolve().parent / "configs" / "digits-tiny.yaml"


def epoch_times(run_dir: Path) -> list[float]:
    return [json.loads(l)["epoch_time_s"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--trials", type=int, default=4, help="trials in the sweep part")
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    import ray
    import torch

    from raylg import config as config_lib
    from raylg.fit import fit
    from raylg.ray import spec as spec_lib, sweep as sweep_lib
    from raylg.ray.trainer import make_trainer

    over = {"schedule.epochs": args.epochs, "schedule.warmup_epochs": 1, "run.progress": False, "data.num_workers": 0}
    over.update(config_lib.parse_set(args.overrides))
    cfg = config_lib.load(CONFIG, over)
    tmp = Path(tempfile.mkdtemp(prefix="raylg-bench-"))
    torch.set_num_threads(1)  # what a 1-CPU Ray worker gets

    t0 = time.perf_counter()
    fit(cfg, tmp / "plain")
    plain_wall = time.perf_counter() - t0
    plain = epoch_times(tmp / "plain")

    ray.init(include_dashboard=True, log_to_driver=False)
    trainer = make_trainer({"cfg": config_lib.flatten(cfg), "run_dir": str(tmp / "ray"), "tracking": None},
                           name="bench", storage=str(tmp / "store"), workers=1, cpus_per_worker=1, gpus_per_worker=0,
                           failures=0)
    t0 = time.perf_counter()
    trainer.fit()
    ray_wall = time.perf_counter() - t0
    rayt = epoch_times(tmp / "ray")

    steady_plain, steady_ray = statistics.median(plain[1:]), statistics.median(rayt[1:])
    print(f"{cfg.model.name} on {cfg.data.name}, {args.epochs} epochs, batch {cfg.optim.batch_size}, 1 thread each")
    print(f"steady epoch, plain loop:           {steady_plain:7.2f} s  (epochs 2..: {', '.join(f'{t:.2f}' for t in plain[1:])})")
    print(f"steady epoch, 1-worker TorchTrainer:{steady_ray:7.2f} s  (epochs 2..: {', '.join(f'{t:.2f}' for t in rayt[1:])})")
    print(f"ratio TorchTrainer / plain:         {steady_ray / steady_plain:7.3f}   (goal <= 1.05)")
    print(f"fixed cost of a trial (wall - epochs): TorchTrainer {ray_wall - sum(rayt):.1f} s, "
          f"plain {plain_wall - sum(plain):.1f} s")

    # a sweep: wall time vs the sum of its trials' training time
    sweep_file = tmp / "sweep.yaml"
    sweep_file.write_text(json.dumps({
        "name": "bench", "run_config": str(CONFIG), "set": {k: v for k, v in over.items()},
        "space": {"optim.lr": {"grid": [2e-3 * (0.7 ** i) for i in range(args.trials)]}},
        "max_concurrent": args.concurrent, "asha": {"grace_period": args.epochs},  # no early stops: compare whole trials
        "resources": {"workers": 0, "cpus_per_worker": 1}, "storage": str(tmp / "sweeps")}))
    s = spec_lib.load(sweep_file)
    t0 = time.perf_counter()
    sweep_lib.run(s, log=lambda *_: None)
    sweep_wall = time.perf_counter() - t0
    trial_sum = sum(sum(epoch_times(d)) for d in (tmp / "sweeps" / "bench" / "trials").iterdir())
    print(f"sweep of {args.trials} trials, {args.concurrent} at a time: wall {sweep_wall:.1f} s, sum of trials' "
          f"epoch times {trial_sum:.1f} s, ideal wall {trial_sum / args.concurrent:.1f} s "
          f"(overhead {sweep_wall - trial_sum / args.concurrent:.1f} s)")
    ray.shutdown()


if __name__ == "__main__":
    main()
