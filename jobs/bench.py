"""Training-step benchmark: images/s, time per step and peak memory, baseline vs LG.

    python jobs/bench.py                      # DeiT-Ti at 32px (patch 4) and 224px (patch 16), batch 32, baseline and LG
    python jobs/bench.py --model pvt_v2_b0 --img-size 224 --batch-size 32 --steps 5
    python jobs/bench.py --params             # parameter counts of every student vs the published ones
    python jobs/bench.py --precisions fp32 bf16 auto --no-lg   # step time per run.precision (auto: what it resolves to)

A step is raylg.engine.train_step (forward + backward + AdamW step) of the whole task (student, aligners; with LG the
ResNet-56 teacher runs on the batch resized to 32px, BN in train mode as in the reference).
Inputs are random tensors: data loading is not part of the step. Each configuration runs in
its own process so peak memory is its own (CUDA: max allocated; CPU: peak RSS of that process,
torch itself included). Figures on shared machines are noisy: read the spread, not one digit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_CASES = [("deit_tiny_patch4_32", 32), ("deit_tiny_patch16_224", 224)]


def one(model: str, img_size: int, batch_size: int, steps: int, warmup: int, lg: bool, device: str, precision: str) -> dict:
    import resource

    import torch

    from raylg import config as config_lib, engine, precision as precision_lib, teacher as teacher_lib
    from raylg.models import create_teacher
    from raylg.task import build_optimizer, build_task

    dev = torch.device(device)
    resolved = precision_lib.resolve(precision, dev, warn=False).precision
    cfg = config_lib.load(None, {"model.name": model, "data.img_size": img_size})
    targets, channels = None, None
    torch.manual_seed(0)
    if lg:
        t = create_teacher("resnet56_cifar", in_chans=3, num_classes=100)
        targets = teacher_lib.OnlineTeacher(t, img_size=32, bn_mode="train").to(dev)
        channels = [16, 32, 64]
    task = build_task(cfg, in_chans=3, num_classes=100, teacher_channels=channels, targets=targets).to(dev)
    opt = build_optimizer(task, cfg.optim)
    batch = {"image": torch.randn(batch_size, 3, img_size, img_size, device=dev),
             "label": torch.randint(0, 100, (batch_size,), device=dev)}
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.train_step(task, batch, opt, device=dev, precision=resolved)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    if dev.type == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**20
        mem_kind = "cuda max allocated"
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        mem_kind = "peak RSS"
    return {"model": model, "img_size": img_size, "batch_size": batch_size, "lg": lg, "device": str(dev),
            "precision": precision, "precision_resolved": resolved, "threads": torch.get_num_threads(), "steps": steps,
            "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
            "images_per_s": batch_size / med, "peak_mem_mib": mem, "mem_kind": mem_kind}


def run_isolated(args, model, img_size, lg, precision=None) -> dict:
    cmd = [sys.executable, __file__, "--one", "--model", model, "--img-size", str(img_size), "--batch-size",
           str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
           "--precision", precision or args.precision] + (["--lg"] if lg else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_params() -> None:
    from raylg.models import PUBLISHED_AT, PUBLISHED_PARAMS, STUDENTS, param_count

    print(f"{'student':24s} {'counted at':>14s} {'params':>9s} {'published':>10s}")
    for name in STUDENTS:
        size, classes = PUBLISHED_AT.get(name, (224, 1000))
        pub = PUBLISHED_PARAMS.get(name)
        print(f"{name:24s} {f'{size}px/{classes} cls':>14s} {param_count(name, size, classes) / 1e6:8.2f}M "
              f"{'' if pub is None else f'{pub:.2f}M':>10s}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="student name (default: the DeiT-Ti pair at 32 and 224)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "auto"],
                   help="compare step time across these run.precision values (auto: bf16 where native, else fp32)")
    p.add_argument("--no-lg", action="store_true", help="baseline only")
    p.add_argument("--lg", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--params", action="store_true", help="print parameter counts and exit")
    args = p.parse_args(argv)
    if args.params:
        return print_params()
    if args.one:
        print(json.dumps(one(args.model, args.img_size, args.batch_size, args.steps, args.warmup, args.lg,
                             args.device, args.precision)))
        return
    cases = [(args.model, args.img_size)] if args.model else DEFAULT_CASES
    if args.precisions:
        return compare_precisions(args, cases)
    print(f"device {args.device}, {os.cpu_count()} CPUs, batch {args.batch_size}, {args.precision}, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'student':24s} {'px':>4s} {'arm':>8s} {'s/step':>8s} {'img/s':>8s} {'peak MiB':>9s} {'LG/base':>8s}")
    for model, size in cases:
        base = run_isolated(args, model, size, lg=False)
        rows = [base] + ([] if args.no_lg else [run_isolated(args, model, size, lg=True)])
        for r in rows:
            ratio = f"{r['step_s_median'] / base['step_s_median']:.3f}" if r["lg"] else ""
            print(f"{model:24s} {size:4d} {'LG' if r['lg'] else 'baseline':>8s} {r['step_s_median']:8.3f} "
                  f"{r['images_per_s']:8.1f} {r['peak_mem_mib']:9.0f} {ratio:>8s}", flush=True)
    print(f"memory: {rows[0]['mem_kind']}")


def compare_precisions(args, cases) -> None:
    import torch

    from raylg import precision as precision_lib

    native, why = precision_lib.native_bf16(torch.device(args.device))
    print(f"device {args.device} ({why}; native bf16: {native}), batch {args.batch_size}, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'student':24s} {'px':>4s} {'arm':>8s} {'precision':>10s} {'runs as':>8s} {'s/step':>8s} {'img/s':>8s} "
          f"{'vs fp32':>8s}")
    for model, size in cases:
        for lg in ([False] if args.no_lg else [False, True]):
            base = None
            for prec in args.precisions:
                r = run_isolated(args, model, size, lg, prec)
                if prec == "fp32":
                    base = r["step_s_median"]
                ratio = f"{base / r['step_s_median']:.2f}x" if base else ""
                print(f"{model:24s} {size:4d} {'LG' if lg else 'baseline':>8s} {prec:>10s} {r['precision_resolved']:>8s} "
                      f"{r['step_s_median']:8.3f} {r['images_per_s']:8.1f} {ratio:>8s}", flush=True)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    main()
