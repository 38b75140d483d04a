"""GPU check: images/s, step time, peak memory and MFU of the training step as raylg runs it.

    python jobs/bench_gpu.py                          # one GPU, about 5 minutes
    python jobs/bench_gpu.py --budget-s 600 --epochs 3
    python jobs/bench_gpu.py --device cpu --cases deit_micro_patch4_32:32 --pack 0   # the same rows on the CPU
    python jobs/bench_gpu.py --device cpu --cases deit_micro_patch4_32:32 --compare-compile   # when compiling pays off

Rows, for DeiT-Ti at 224 px / patch 16 and at 32 px / patch 4, batch 128, bf16: baseline and LG
(a ResNet-56 teacher at 32 px, random weights: its cost is what is measured), the per-image
loader (DataLoader workers, PIL) and the device pipeline (the split on the GPU, augmented there),
eager and compiled (run.compile: compile time printed apart). Then 1 and 4 trials packed on the
one GPU (what `resources.gpus_per_worker: 0.25` gives): separate processes, each capped at its
share of the GPU's memory, started together; the aggregate images/s is their sum.

Data: scikit-learn's bundled digits (no download), upsampled to the student's input, the
digits preset's augmentation; an epoch is ~12 steps of 128, the first epoch is a warm-up.
images/s counts the whole step as the training loop runs it (data included); step time is
batch / (images/s). MFU = FLOPs of one training step (torch.utils.flop_counter, forward and
backward of the task, teacher included) / step time / the device's peak dense bf16 FLOP/s
(a table of known GPUs, or --peak-tflops). Peak memory: torch.cuda.max_memory_allocated.
Rows that would pass --budget-s are skipped and named.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = Path(__file__).resolve().parent / "configs" / "digits-tiny.yaml"
CASES = ["deit_tiny_patch16_224:224", "deit_tiny_patch4_32:32"]
# (arm, pipeline, compiled) per case; the compiled rows run after every eager row and the packed trials
ROWS = [("baseline", "loader", False), ("baseline", "device", False), ("lg", "loader", False), ("lg", "device", False),
        ("baseline", "device", True), ("lg", "device", True)]
COMPILE_ROW_S = 60  # a compiled row is not started with less than this left of --budget-s
# peak dense bf16 tensor FLOP/s (no sparsity), from the vendors' datasheets; matched on torch's device name
PEAK_BF16_TFLOPS = [("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4), ("GH200", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.2)]


def peak_flops(device, override_tflops: float) -> tuple[float, str]:
    import torch

    if override_tflops:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    if device.type != "cuda":
        return 0.0, "no peak for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{name}: {tflops:g} TFLOP/s dense bf16"
    return 0.0, f"{name}: peak unknown (give --peak-tflops)"


def _cfg(model: str, img: int, arm: str, pipeline: str, compiled: bool, batch: int, workers: int, device: str):
    from raylg import config as config_lib

    return config_lib.load(CONFIG, {
        "model.name": model, "data.img_size": img, "data.pipeline": pipeline, "data.num_workers": workers,
        "optim.batch_size": batch, "run.precision": "bf16", "run.compile": compiled, "run.device": device,
        "run.progress": False, "run.log_every": 1000, "guidance.locality.beta": 2.5 if arm == "lg" else 0.0})


def build(cfg, arm: str, dev):
    """(bundle, task, optimizer, train batches) as fit() builds them, with a random ResNet-56 teacher for LG."""
    import torch

    from raylg import data, fit as fit_lib, teacher as teacher_lib
    from raylg.data import device as device_data
    from raylg.models import create_teacher
    from raylg.task import build_optimizer, build_task

    bundle = data.build(cfg.data)
    targets, channels = None, None
    torch.manual_seed(0)
    if arm == "lg":
        t = create_teacher("resnet56_cifar", in_chans=bundle.in_chans, num_classes=bundle.num_classes)
        targets = teacher_lib.OnlineTeacher(t, img_size=32, bn_mode="train").to(dev)
        channels = [16, 32, 64]
    task = build_task(cfg, in_chans=bundle.in_chans, num_classes=bundle.num_classes, teacher_channels=channels,
                      targets=targets).to(dev)
    opt = build_optimizer(task, cfg.optim)
    pipe = device_data.plan(cfg.data, bundle, dev)  # refuses pipeline: device that cannot be, naming why
    if pipe.pipeline == "device":
        batches = device_data.DeviceTrainData(bundle.train, pipe.program, dev, batch_size=cfg.optim.batch_size, seed=1)
    else:
        batches = fit_lib._loader(bundle.train, cfg.optim.batch_size, cfg, train=True, seed=1)
    return bundle, task, opt, batches


def step_flops(task, batches, dev) -> float:
    """FLOPs of one training step (forward + backward, bf16 autocast) on one batch, by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from raylg import engine

    batch = engine._to(next(iter(batches)), dev)
    task.train()
    with FlopCounterMode(display=False) as counter:
        engine.forward_losses(task, batch, device=dev, precision="bf16")[0].backward()
    for p in task.parameters():
        p.grad = None
    return float(counter.get_total_flops())


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(model: str, img: int, arm: str, pipeline: str, compiled: bool, *, batch: int, epochs: int, workers: int,
            device: str, flops_cache: dict, seconds: float = 0.0, start_at: float = 0.0) -> dict:
    """One row: warm-up epoch, then `epochs` timed epochs (or, with `seconds`, as many as fit from
    `start_at`, the packed trials' common start)."""
    import torch

    from raylg import compiled as compiled_lib, engine

    dev = torch.device(device)
    cfg = _cfg(model, img, arm, pipeline, compiled, batch, workers, device)
    bundle, task, opt, batches = build(cfg, arm, dev)
    key = (model, img, arm)
    if key not in flops_cache:
        flops_cache[key] = step_flops(task, batches, dev)
    compile_s = 0.0
    if compiled:
        compiled_lib.compile_task(task)
        compile_s = compiled_lib.warm_up(task, batches, dev, "bf16")
    lr_at = lambda s: 1e-4  # noqa: E731  the lr does not change the step's cost
    step = 0
    steps = len(batches)

    def epoch(e: int):
        nonlocal step
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(e)
        m, step = engine.train_one_epoch(task, batches, opt, lr_at=lr_at, step=step, device=dev, precision="bf16",
                                         log_every=1000)
        return m

    epoch(0)  # warm-up: allocator, cudnn autotune, loader workers
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    late = 0.0
    if start_at:
        late = max(0.0, time.time() - start_at)
        while time.time() < start_at:
            time.sleep(0.01)
    seen, t0, e = 0, time.perf_counter(), 1
    while (seconds and time.perf_counter() - t0 < seconds) or (not seconds and e <= epochs):
        epoch(e)
        seen += steps * batch  # whole batches only (the loader drops the last part; the device pipeline too)
        e += 1
    _sync(dev)
    elapsed = time.perf_counter() - t0
    ips = seen / elapsed
    mem = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
    out = {"model": model, "img": img, "arm": arm, "pipeline": pipeline, "compiled": compiled, "batch": batch,
           "images_per_s": ips, "step_s": batch / ips, "peak_mib": mem, "compile_s": compile_s,
           "flops_per_step": flops_cache[key], "steps": seen // batch, "late_s": late, "train_images": len(bundle.train)}
    return out


def free(device: str) -> None:
    """Give back what the last row held (its task, optimizer and split), before the next row."""
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def compare_compile(args) -> None:
    """Eager and compiled copies of one task, timed in alternating blocks of the same batches (a
    busy machine's drift hits both alike); prints each step's median and when compiling pays off."""
    import copy
    import statistics

    import torch

    from raylg import compiled as compiled_lib, engine
    from raylg.task import build_optimizer

    dev = torch.device(args.device)
    print(f"eager vs compiled, {args.rounds} alternating rounds of {args.steps} steps, batch {args.batch_size}, bf16 autocast, "
          f"{torch.get_num_threads()} threads on {args.device}", flush=True)
    for case in args.cases:
        model, img = case.split(":")
        for arm in ("baseline", "lg"):
            cfg = _cfg(model, int(img), arm, "device", False, args.batch_size, 0, args.device)
            bundle, task, opt, batches = build(cfg, arm, dev)
            ctask = copy.deepcopy(task)
            copt = build_optimizer(ctask, cfg.optim)
            compile_s = compiled_lib.warm_up(compiled_lib.compile_task(ctask), batches, dev, "bf16")
            data = []
            for b in batches:
                data.append({k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()})
                if len(data) == args.steps:
                    break

            def block(t, o) -> float:
                t.train()
                _sync(dev)
                t0 = time.perf_counter()
                for b in data:
                    engine.train_step(t, b, o, device=dev, precision="bf16")
                _sync(dev)
                return (time.perf_counter() - t0) / len(data)

            block(task, opt), block(ctask, copt)  # warm-up
            times = {"eager": [], "compiled": []}
            for r in range(args.rounds):
                pair = [("eager", task, opt), ("compiled", ctask, copt)]
                for name, t, o in (pair if r % 2 == 0 else pair[::-1]):
                    times[name].append(block(t, o))
            e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
            verdict = (f"pays off after {compile_s / (e - c):.0f} steps ({compile_s / (e - c) / len(batches):.1f} epochs of "
                       f"{len(batches)} steps here)" if e > c else "does not pay off (compiled is not faster)")
            print(f"{model} {img}px {arm}: eager {1000 * e:.1f} ms/step, compiled {1000 * c:.1f} ms/step "
                  f"({e / c:.2f}x; spread eager {1000 * min(times['eager']):.0f}-{1000 * max(times['eager']):.0f}, compiled "
                  f"{1000 * min(times['compiled']):.0f}-{1000 * max(times['compiled']):.0f}), compile {compile_s:.1f} s: "
                  f"{verdict}", flush=True)
            del bundle


def packed(args, n: int) -> dict:
    """n trials of the 32 px baseline on the device pipeline, one process each, started together."""
    start_at = time.time() + args.pack_start_s
    cmd = [sys.executable, __file__, "--one", "--device", args.device, "--batch-size", str(args.batch_size),
           "--cases", args.cases[-1],
           "--seconds", str(args.pack_seconds), "--start-at", str(start_at), "--memory-fraction", str(1.0 / n)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    rows = []
    for p in procs:
        out, err = p.communicate(timeout=args.pack_start_s + args.pack_seconds + 300)
        if p.returncode != 0:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            raise RuntimeError(f"packed trial failed (exit {p.returncode}): {last}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return {"trials": n, "aggregate_images_per_s": sum(r["images_per_s"] for r in rows),
            "per_trial": [round(r["images_per_s"]) for r in rows], "peak_mib": max(r["peak_mib"] for r in rows),
            "late_s": max(r["late_s"] for r in rows)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--cases", nargs="+", default=CASES, metavar="MODEL:PX")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per row, after one warm-up epoch")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader rows: DataLoader workers")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--pack", type=int, default=4, help="trials packed on the GPU for the aggregate row (0: skip)")
    p.add_argument("--pack-seconds", type=float, default=15.0, help="timed seconds of the packed trials")
    p.add_argument("--pack-start-s", type=float, default=30.0, help="time the packed processes get to start")
    p.add_argument("--budget-s", type=float, default=290.0, help="skip rows that would start after this many seconds")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak dense bf16 TFLOP/s")
    p.add_argument("--json", help="write the rows here too")
    p.add_argument("--compare-compile", action="store_true",
                   help="only eager vs compiled, alternating blocks of --steps steps for --rounds rounds (steady under load)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5)
    # one packed trial (internal)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--memory-fraction", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    began = time.perf_counter()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no GPU (torch.cuda.is_available() is False); use --device cpu")
    dev = torch.device(args.device)
    if args.one:
        if args.memory_fraction and dev.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(args.memory_fraction, torch.cuda.current_device())
        model, img = args.cases[-1].split(":")
        print(json.dumps(measure(model, int(img), "baseline", "device", False, batch=args.batch_size, epochs=args.epochs,
                                 workers=0, device=args.device, flops_cache={}, seconds=args.seconds,
                                 start_at=args.start_at)))
        return
    if args.compare_compile:
        return compare_compile(args)
    peak, peak_src = peak_flops(dev, args.peak_tflops)
    name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    print(f"device {name}; torch {torch.__version__}; bf16 autocast; batch {args.batch_size}; {args.epochs} timed epochs "
          f"after 1 warm-up; MFU against {peak_src}", flush=True)
    print(f"{'student':24s} {'px':>4s} {'arm':>8s} {'pipeline':>8s} {'compiled':>8s} {'img/s':>9s} {'ms/step':>8s} "
          f"{'peak MiB':>9s} {'GFLOP/step':>10s} {'MFU':>6s} {'compile s':>9s}", flush=True)
    rows, flops_cache, skipped = [], {}, []

    def run_rows(compiled_rows: bool) -> None:
        for case in args.cases:
            model, img = case.split(":")
            for arm, pipeline, compiled in ROWS:
                if compiled != compiled_rows or (compiled and args.no_compile):
                    continue
                what = f"{model} {img}px {arm} {pipeline}{' compiled' if compiled else ''}"
                if time.perf_counter() - began > args.budget_s - (COMPILE_ROW_S if compiled else 0):
                    skipped.append(what)
                    continue
                try:
                    r = measure(model, int(img), arm, pipeline, compiled, batch=args.batch_size, epochs=args.epochs,
                                workers=args.workers if pipeline == "loader" else 0, device=args.device,
                                flops_cache=flops_cache)
                except Exception as e:  # a row that cannot run (e.g. the device pipeline refused) is named, not fatal
                    print(f"{what}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
                    continue
                finally:
                    free(args.device)
                mfu = r["flops_per_step"] / r["step_s"] / peak if peak else float("nan")
                r["mfu"] = mfu
                comp = f"{r['compile_s']:.1f}" if compiled else "-"
                mem = "-" if r["peak_mib"] != r["peak_mib"] else f"{r['peak_mib']:.0f}"  # no figure on a CPU
                rows.append(r)
                print(f"{model:24s} {img:>4s} {arm:>8s} {pipeline:>8s} {'yes' if compiled else 'no':>8s} "
                      f"{r['images_per_s']:9.0f} {1000 * r['step_s']:8.2f} {mem:>9s} "
                      f"{r['flops_per_step'] / 1e9:10.1f} {'' if mfu != mfu else f'{100 * mfu:5.1f}%':>6s} "
                      f"{comp:>9s}", flush=True)

    run_rows(False)  # eager rows first, then the packed trials, then the compiled rows (minutes each) as time allows
    pack = []
    if args.pack and dev.type == "cuda":
        for n in (1, args.pack):
            if time.perf_counter() - began + args.pack_start_s + args.pack_seconds > args.budget_s:
                skipped.append(f"{n} packed trials")
                continue
            r = packed(args, n)
            pack.append(r)
            late = f", one started {r['late_s']:.1f} s late (raise --pack-start-s)" if r["late_s"] > 0 else ""
            print(f"{n} trial{'s' if n > 1 else ''} on one GPU ({args.cases[-1].split(':')[0]}, baseline, device pipeline, "
                  f"memory cap {100 / n:.0f}% each): aggregate {r['aggregate_images_per_s']:.0f} img/s "
                  f"(per trial {r['per_trial']}), peak {r['peak_mib']:.0f} MiB per trial{late}", flush=True)
        if len(pack) == 2:
            print(f"packing {args.pack} trials: {pack[1]['aggregate_images_per_s'] / pack[0]['aggregate_images_per_s']:.2f}x "
                  f"the images/s of one", flush=True)
    run_rows(True)
    for r in rows:
        if r["compiled"]:
            eager = next((e for e in rows if not e["compiled"] and e["model"] == r["model"] and e["arm"] == r["arm"]
                          and e["pipeline"] == r["pipeline"]), None)
            if eager and eager["step_s"] > r["step_s"]:
                gain = eager["step_s"] - r["step_s"]
                print(f"compile pays off for {r['model']} {r['arm']} after {r['compile_s'] / gain:.0f} steps "
                      f"({r['compile_s']:.1f} s compile, {1000 * gain:.2f} ms saved per step)")
            elif eager:
                print(f"compile does not pay off for {r['model']} {r['arm']}: compiled step {1000 * r['step_s']:.2f} ms "
                      f"vs eager {1000 * eager['step_s']:.2f} ms")
    if skipped:
        print(f"skipped (over --budget-s {args.budget_s:g}): {'; '.join(skipped)}")
    print(f"total {time.perf_counter() - began:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows, "packed": pack}, indent=1))


if __name__ == "__main__":
    main()
