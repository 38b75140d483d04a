"""Data pipeline benchmark: device-resident batches vs the per-image PIL loader.

    python jobs/bench_pipeline.py                    # images/s per core, device vs loader: 32px and 224px with RandAugment
    python jobs/bench_pipeline.py --epoch            # one epoch of the digits preset end to end (train + val), device vs loader
    python jobs/bench_pipeline.py --accuracy         # the short LG run of tests/test_device_pipeline.py, 3 seeds per path
    python jobs/bench_pipeline.py --device cuda      # the device path on a GPU (the loader stays on one CPU core)

Per core: both paths run in this one process with torch.set_num_threads(1) (the loader: the
dataset's own transform, num_workers=0, plus default_collate; the device path: its batched ops
on --device, whole epochs, the epoch's random draws included, CUDA synchronised before each
clock read). Rates are images per CPU second of this process (what one core gives, even when
other jobs share the cores) and images per wall second; the ratio is on CPU seconds (on a GPU,
on wall seconds). Data: Fashion-MNIST's training images
(Debian's dataset-fashion-mnist; 28px, 1 channel) where present, else scikit-learn's digits.
Recipes: 'paper' is the CIFAR-100 recipe (RandomResizedCrop 0.08-1 bicubic, flip,
RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25); 'preset' is fashion-small's (crop
0.5-1, flip, colour jitter). Figures on shared machines are noisy: read the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
DIGITS = ROOT / "configs" / "digits-tiny.yaml"
PAPER = {"data.scale_min": 0.08, "data.hflip": 0.5, "data.auto_augment": "rand-m9-mstd0.5-inc1", "data.re_prob": 0.25,
         "data.interpolation": "bicubic"}
PRESET = {"data.scale_min": 0.5, "data.hflip": 0.5, "data.auto_augment": "", "data.re_prob": 0.0}


def _bundle(img_size: int, recipe: dict, name: str, per_class: int = 0):
    from raylg import config as config_lib, data

    over = {"data.name": name, "data.img_size": img_size, "data.per_class": per_class, **recipe}
    return data.build(config_lib.load(DIGITS, over).data)


def _rgb(ds, cfg):
    """The split's images as 3-channel RGB (grey, each channel the same): CIFAR's shape from real images."""
    import numpy as np

    from raylg.data.dataset import ImageDataset
    from raylg.data.device import decode
    from raylg.data.source import ArraySplit
    from raylg.data.transforms import train_transform

    a = decode(ds)  # N x 1 x H x W uint8
    split = ArraySplit(np.repeat(a.transpose(0, 2, 3, 1), 3, -1), np.asarray(ds.labels))
    norm = next(t for t in ds.transform.transforms if type(t).__name__ == "Normalize")
    mean, std = (float(norm.mean[0]),) * 3, (float(norm.std[0]),) * 3
    return ImageDataset(split, np.arange(len(a)), train_transform(cfg, mean, std, 3), "train")


def _dataset_name() -> str:
    return "fashion_mnist" if Path("/usr/share/datasets/fashion-mnist").is_dir() else "digits"


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(done: int, start: tuple[float, float]) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process)."""
    wall, cpu = _clocks()
    return done / (wall - start[0]), done / max(cpu - start[1], 1e-9)


def loader_rate(ds, n: int, batch: int, repeats: int) -> list[tuple[float, float]]:
    from torch.utils.data import default_collate

    rates = []
    for r in range(repeats):
        start = _clocks()
        done = 0
        while done < n:
            default_collate([ds[(done + k) % len(ds)] for k in range(batch)])
            done += batch
        rates.append(_rates(done, start))
    return rates


def device_rate(ds, in_chans: int, dev, batch: int, repeats: int) -> list[tuple[float, float]]:
    """Whole epochs (the epoch's random draws on the host included, as in training)."""
    from raylg.data import device as D

    prog = D.compile_transform(ds.transform, in_chans)
    dtd = D.DeviceTrainData(ds, prog, dev, batch_size=batch, seed=0)
    next(iter(dtd))  # warm-up: first kernels, allocations, the crop tables
    rates = []
    for r in range(repeats):
        dtd.set_epoch(r + 1)
        _sync(dev)
        start = _clocks()
        done = 0
        for b in dtd:
            done += b["image"].shape[0]
        _sync(dev)
        rates.append(_rates(done, start))
    return rates


def bench_pipeline(args) -> list[dict]:
    torch.set_num_threads(1)
    name = _dataset_name()
    dev = torch.device(args.device)
    rows = []
    per_class = max(1, args.images // 10)
    for recipe_name, recipe, size in (("preset", PRESET, 32), ("paper", PAPER, 32), ("paper", PAPER, 224)):
        b = _bundle(size, recipe, name, per_class)
        train, chans = (_rgb(b.train, b.cfg), 3) if args.rgb else (b.train, b.in_chans)
        n_loader = args.images // (4 if size == 224 else 1)
        lo = loader_rate(train, n_loader, 128, args.repeats)
        de = device_rate(train, chans, dev, 128, args.repeats)
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        row = {"data": name + (" rgb" if args.rgb else ""), "recipe": recipe_name, "img_size": size, "device": str(dev),
               "train_images": len(train),
               "loader_img_s": med(lo, 0), "device_img_s": med(de, 0), "loader_img_cpu_s": med(lo, 1),
               "device_img_cpu_s": med(de, 1), "loader_runs": lo, "device_runs": de}
        # per core: images per CPU second (one thread each; robust to other jobs on the cores). On a GPU the
        # device path's CPU time is the host's launch work, so its ratio there is per wall second.
        k = "img_cpu_s" if dev.type == "cpu" else "img_s"
        row["ratio"] = row[f"device_{k}"] / row[f"loader_{k}"]
        rows.append(row)
        print(f"{row['data']:17s} {recipe_name:6s} {size:4d}px  loader {row['loader_img_cpu_s']:7.0f} img/CPU-s "
              f"({row['loader_img_s']:7.0f}/s wall)   device ({dev}) {row['device_img_cpu_s']:7.0f} img/CPU-s "
              f"({row['device_img_s']:7.0f}/s wall)   x{row['ratio']:.1f}", flush=True)
    return rows


def bench_epoch(args) -> list[dict]:
    """Two epochs of the digits preset per path (the second timed: warm caches), train + val."""
    from raylg import config as config_lib
    from raylg.fit import fit

    rows = []
    out = Path(tempfile.mkdtemp(prefix="bench-epoch-"))
    for pipe in ("loader", "device"):
        cfg = config_lib.load(DIGITS, {"data.pipeline": pipe, "schedule.epochs": 2, "run.progress": False,
                                       "run.out_dir": str(out), "run.name": pipe, "run.device": args.device})
        t0 = time.perf_counter()
        fit(cfg, out / pipe)
        wall = time.perf_counter() - t0
        m = [json.loads(x) for x in (out / pipe / "metrics.jsonl").read_text().splitlines()]
        d = json.loads((out / pipe / "data.json").read_text())
        rows.append({"pipeline": pipe, "epoch_s": m[-1]["epoch_time_s"], "train_img_s": m[-1]["images_per_s"],
                     "wall_s_2_epochs": wall, "precision": d["precision"]["resolved"], "threads": torch.get_num_threads()})
        print(f"digits preset, {pipe:6s}: epoch {m[-1]['epoch_time_s']:.2f} s (train {m[-1]['images_per_s']:.0f} img/s), "
              f"2 epochs + setup {wall:.1f} s, {d['precision']['resolved']}, {torch.get_num_threads()} threads", flush=True)
    return rows


def bench_accuracy(args) -> list[dict]:
    """tests/test_device_pipeline.py's short LG run, seeds 1..3 per path: best val top-1."""
    from raylg import config as config_lib
    from raylg.fit import fit

    out = Path(tempfile.mkdtemp(prefix="bench-acc-"))
    teacher = args.teacher
    if not teacher:
        import train_teacher

        teacher = str(train_teacher.main(["--out", str(out), "--name", "t", "--set", "run.progress=false",
                                          "--set", "schedule.epochs=3", "--set", "run.max_train_batches=10"]))
    rows = []
    for pipe in ("device", "loader"):
        accs = []
        for seed in args.seeds:
            cfg = config_lib.load(DIGITS, {"data.pipeline": pipe, "teacher.path": teacher, "schedule.epochs": 10,
                                           "schedule.warmup_epochs": 1, "run.max_train_batches": 0, "run.seed": seed,
                                           "run.progress": False, "run.out_dir": str(out), "run.name": f"{pipe}-{seed}",
                                           "data.eval_batch_size": 512})
            accs.append(fit(cfg, out / f"{pipe}-{seed}")["best"]["val/top1"])
        rows.append({"pipeline": pipe, "seeds": args.seeds, "best_val_top1": accs, "mean": statistics.mean(accs),
                     "std": statistics.stdev(accs) if len(accs) > 1 else 0.0})
        print(f"{pipe:6s}: best val top-1 {statistics.mean(accs):.2f} ± {rows[-1]['std']:.2f} ({accs})", flush=True)
    return rows


def machine() -> str:
    from raylg import precision

    model = ""
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = precision.cpu_flags()
    keep = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model or 'unknown CPU'}, {os.cpu_count()} CPUs, flags: {' '.join(keep) or 'none of avx2/avx512/amx'}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="where the device path runs (cpu | cuda)")
    p.add_argument("--images", type=int, default=4096, help="training images (images // 10 per class); the device path "
                   "times whole epochs of them, the loader this many images (a quarter at 224px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rgb", action="store_true", help="the images as 3-channel RGB (CIFAR's shape; grey content)")
    p.add_argument("--epoch", action="store_true", help="an epoch of the digits preset end to end, device vs loader")
    p.add_argument("--accuracy", action="store_true", help="the short LG run of the tests, 3 seeds per path")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--teacher", help="a digits teacher (.safetensors) for --accuracy (default: train one, ~1 min)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    print(machine(), f"| torch {torch.__version__}", flush=True)
    if args.accuracy:
        sys.path.insert(0, str(ROOT))
        rows = bench_accuracy(args)
    elif args.epoch:
        rows = bench_epoch(args)
    else:
        rows = bench_pipeline(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
