"""Benchmarks for precomputed teacher features; prints figures (no assertions).

    python jobs/bench_features.py --teacher runs/teacher-digits-tiny/teacher.safetensors            # everything
    python jobs/bench_features.py --teacher T --only precompute,read,share,replay,step,accuracy
    python jobs/bench_features.py --teacher T --only step --steps 8 --batch-size 32

precompute  images/s of jobs/precompute_features.py's writer (digits train split, CPU); bytes per image
read        shard read MB/s: local (verify + memory-map, then every row gathered), from an S3 server
            (moto on 127.0.0.1: download into the node cache), and Arrow IPC vs Parquet for the same table
share       time until a fresh process can gather a batch: node cache + memory map vs Ray's object store
replay      how far replayed maps are from the teacher run on the student's cropped image (relative MSE)
step        training step time, shards vs online teacher, DeiT-Ti at 32 (patch 4) and 224 (patch 16)
accuracy    final val top-1 of the digits preset, online teacher vs shards, same seeds
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raylg import config as config_lib, data, engine, features, teacher as teacher_lib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "jobs" / "configs" / "digits-tiny.yaml"


def data_cfg(teacher_path: str):
    card = teacher_lib.read_card(teacher_path)
    flat = {k: v for k, v in card["config"].items() if k.startswith("data.")}
    return config_lib.unflatten(flat)


def moto_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return proc


def bench_precompute(args, work: Path) -> str:
    bundle = data.build(data_cfg(args.teacher).data)
    out = work / "local"
    best = None
    for _ in range(args.repeats):
        m = features.precompute(args.teacher, bundle, str(out), batch_size=256, progress=False, log=lambda *_: None)
        best = m if best is None or m["stats"]["images_per_s"] > best["stats"]["images_per_s"] else best
    st = best["stats"]
    print(f"precompute: {st['images']} images, {st['images_per_s']:.0f} images/s end to end (best of {args.repeats}; "
          f"teacher alone {st['teacher_images_per_s']:.0f} images/s), {st['bytes_per_image']:.0f} bytes/image "
          f"({len(best['shards'])} shard, {best['bytes'] / 2**20:.1f} MiB)")
    return str(out)


def _gather_all(store) -> int:
    idx = store.indices()
    n = 0
    for s in store.stages:
        for k in range(0, len(idx), 256):
            n += store.gather(idx[k:k + 256], s).numel() * 2
    return n


def bench_read(args, local: str, work: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    m = features.read_manifest(local)
    mb = m["bytes"] / 1e6
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        store = features.FeatureStore.open(local)
        times.append(time.perf_counter() - t0)
    t_open = min(times)
    t0 = time.perf_counter()
    n = _gather_all(store)
    t_gather = time.perf_counter() - t0
    print(f"read local: open (sha256 verify + memory map) {mb / t_open:.0f} MB/s ({mb:.0f} MB in {t_open:.2f}s, "
          "page cache warm); "
          f"gather every row in batches of 256 {n / 1e6 / t_gather:.0f} MB/s")

    # the same table as Parquet (uncompressed, no dictionary) read back to numpy
    path = store.paths[0]
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    pq_path = work / "same.parquet"
    pq.write_table(table, pq_path, compression="none", use_dictionary=False)
    cols = [c for c in table.column_names if c.startswith("stage")]

    def ipc_read():  # every byte copied out of the memory map into numpy
        t = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        return [np.array(t.column(c).chunk(0).flatten().to_numpy(zero_copy_only=True)) for c in cols]

    def pq_read():  # decoded into Arrow, then to numpy
        t = pq.read_table(pq_path)
        return [np.array(t.column(c).combine_chunks().flatten().to_numpy()) for c in cols]

    for name, fn, size in (("arrow-ipc (mmap)", ipc_read, path.stat().st_size), ("parquet", pq_read, pq_path.stat().st_size)):
        best = min(_timed(fn) for _ in range(args.repeats))
        print(f"read format {name}: {size / 1e6 / best:.0f} MB/s into numpy arrays ({size / 1e6:.0f} MB file, "
              f"{best * 1000:.0f} ms)")

    if args.s3:
        proc = moto_server()
        try:
            bundle = data.build(data_cfg(args.teacher).data)
            uri = "s3://bench/features/digits"
            t0 = time.perf_counter()
            features.precompute(args.teacher, bundle, uri, progress=False)
            t_write = time.perf_counter() - t0
            downs = []
            for r in range(args.repeats):
                os.environ["RAYLG_FEATURE_CACHE"] = str(work / f"cache{r}")
                t0 = time.perf_counter()
                features.FeatureStore.open(uri)
                downs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            features.FeatureStore.open(uri)  # the node cache already holds it
            t_cached = time.perf_counter() - t0
            print(f"read S3 (moto server on 127.0.0.1): first open downloads + verifies {mb / min(downs):.0f} MB/s "
                  f"({min(downs):.2f}s); later opens on the node (cache) {mb / t_cached:.0f} MB/s; "
                  f"precompute + upload {t_write:.1f}s")
        finally:
            proc.terminate()
            proc.wait()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


SHARE_CHILD = r"""
import sys, time, numpy as np
t0 = time.perf_counter()
from raylg.features import FeatureStore
t1 = time.perf_counter()
s = FeatureStore.open(sys.argv[1])
idx = np.random.default_rng(0).choice(s.indices(), 128, replace=False)
maps = [s.gather(idx, k) for k in sorted(s.stages)]
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def bench_share(args, local: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.run([sys.executable, "-c", SHARE_CHILD, local], capture_output=True, text=True, env=env, check=True)
            for _ in range(args.repeats)]
    ready = min(float(r.stdout.split()[1]) for r in runs)
    print(f"share (node cache + mmap): a fresh process opens (verifies) and gathers a batch of 128 in {ready:.2f}s; "
          f"the bytes live once in the page cache for every process on the node")
    try:
        import ray
    except ImportError:
        print("share (ray object store): ray not installed")
        return
    store = features.FeatureStore.open(local)
    idx = store.indices()
    arrays = {s: store.gather(idx, s).numpy() for s in store.stages}
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        ref = ray.put({"index": idx, "maps": arrays})
        t_put = time.perf_counter() - t0

        @ray.remote(num_cpus=1)
        def gather(obj):
            t = time.perf_counter()
            pos = {int(i): k for k, i in enumerate(obj["index"])}
            rows = [pos[int(i)] for i in np.random.default_rng(0).choice(obj["index"], 128, replace=False)]
            out = [torch.from_numpy(a[rows]) for a in obj["maps"].values()]
            return time.perf_counter() - t, sum(o.numel() for o in out)

        ray.get(gather.remote(ref))  # worker start-up
        t_get = min(ray.get(gather.remote(ref))[0] for _ in range(args.repeats))
        print(f"share (ray object store): ray.put of {sum(a.nbytes for a in arrays.values()) / 1e6:.0f} MB {t_put:.2f}s once, "
              f"then a task gets (zero-copy) and gathers a batch in {t_get:.3f}s; needs ray in the core and an owner "
              f"process that outlives the trials (else the object is freed)")
    finally:
        ray.shutdown()


def bench_replay(args, local: str) -> None:
    import random

    import torchvision.transforms as T

    from raylg.data.transforms import GeometryCompose

    store = features.FeatureStore.open(local)
    model, _ = teacher_lib.load(args.teacher)
    for hflip in (0.0, 0.5):
        for smin in (0.08, 0.6):
            cfg = config_lib.apply_overrides(data_cfg(args.teacher), {"data.hflip": hflip, "data.scale_min": smin})
            b = data.build(cfg.data)
            t = GeometryCompose([u for u in b.train.transform.transforms if not isinstance(u, T.ColorJitter)])
            ds = b.train.with_transform(t)
            random.seed(1), torch.manual_seed(1)
            batch = torch.utils.data.default_collate([ds[k] for k in range(256)])
            line = []
            for bn in ("eval", "train"):
                model.train(bn == "train")
                with torch.no_grad():
                    online = model.forward_stages(batch["image"])
                st = features.ShardTeacher(store)(batch)
                rel = [float((st.stages[s] - online[s]).pow(2).mean() / online[s].var()) for s in range(len(online))]
                plain = [float((store.gather(batch["index"].numpy(), s).float() - online[s]).pow(2).mean() / online[s].var())
                         for s in range(len(online))]
                line.append(f"vs online bn={bn}: replay {'/'.join(f'{r:.3f}' for r in rel)} "
                            f"(no replay {'/'.join(f'{p:.3f}' for p in plain)})")
            print(f"replay hflip={hflip} scale_min={smin}: relative MSE per stage " + "; ".join(line))


def _step_task(cfg):
    from raylg.fit import setup
    from raylg.task import build_optimizer

    s = setup(cfg)
    return s.task, build_optimizer(s.task, cfg.optim), s.targets


def bench_step(args, local: str) -> None:
    from torch.utils.data import DataLoader

    for model, size in (("deit_tiny_patch4_32", 32), ("deit_tiny_patch16_224", 224)):
        base = {"model.name": model, "data.img_size": size, "optim.batch_size": args.batch_size, "run.progress": False,
                "model.drop_path": 0.1}
        cfgs = {
            "online(bn=train)": config_lib.load(TINY, {**base, "teacher.path": args.teacher}),
            "online(bn=eval)": config_lib.load(TINY, {**base, "teacher.path": args.teacher, "teacher.bn_mode": "eval"}),
            "shards": config_lib.load(TINY, {**base, "guidance.locality.source": "shards", "guidance.locality.shards": local}),
        }
        arms = {k: _step_task(c) for k, c in cfgs.items()}
        ds = data.build(cfgs["shards"].data).train
        torch.manual_seed(0)
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True)
        batches = list(b for _, b in zip(range(args.steps + 2), loader))
        times = {k: [] for k in arms}
        for i, batch in enumerate(batches):
            order = list(arms) if i % 2 == 0 else list(reversed(arms))  # interleave: load drift hits every arm alike
            for k in order:
                task, opt, _ = arms[k]
                task.train()
                t0 = time.perf_counter()
                engine.train_step(task, batch, opt, device=torch.device("cpu"))
                if i >= 2:  # the first two steps warm up
                    times[k].append(time.perf_counter() - t0)
        # the targets alone (what shards replace)
        tgt = {}
        for k, (_, _, targets) in arms.items():
            ts = []
            for batch in batches[2:]:
                t0 = time.perf_counter()
                targets(batch)
                ts.append(time.perf_counter() - t0)
            tgt[k] = statistics.median(ts)
        med = {k: statistics.median(v) for k, v in times.items()}
        parts = ", ".join(f"{k} {med[k] * 1000:.0f} ms (targets {tgt[k] * 1000:.1f} ms)" for k in arms)
        print(f"step {model} at {size}px, batch {args.batch_size}, median of {len(times['shards'])} interleaved steps: {parts}; "
              f"shards/online(train) {med['shards'] / med['online(bn=train)']:.3f}, shards/online(eval) "
              f"{med['shards'] / med['online(bn=eval)']:.3f}")


def bench_accuracy(args, local: str, work: Path) -> None:
    from raylg.fit import fit

    arms = {
        "online(bn=train)": {"teacher.path": args.teacher},
        "online(bn=eval)": {"teacher.path": args.teacher, "teacher.bn_mode": "eval"},
        "shards": {"guidance.locality.source": "shards", "guidance.locality.shards": local},
    }
    res: dict[str, list[float]] = {k: [] for k in arms}
    for seed in args.seeds:
        for k, o in arms.items():
            name = f"{k.replace('(', '-').replace(')', '').replace('=', '')}-{seed}"
            cfg = config_lib.load(TINY, {**o, "run.seed": seed, "run.progress": False, "schedule.epochs": args.epochs,
                                         "run.out_dir": str(work / "acc"), "run.name": name})
            t0 = time.perf_counter()
            summary = fit(cfg, Path(cfg.run.out_dir) / cfg.run.name)
            res[k].append(summary["last"]["val/top1"])
            print(f"accuracy {k} seed {seed}: final val top-1 {summary['last']['val/top1']:.2f}% "
                  f"(best {summary['best']['val/top1']:.2f}%), "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    for k, v in res.items():
        sd = statistics.stdev(v) if len(v) > 1 else float("nan")
        print(f"accuracy {k}: final val top-1 over seeds {args.seeds}: mean {statistics.mean(v):.2f}% sd {sd:.2f} "
              f"({', '.join(f'{x:.2f}' for x in v)})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--only", default="precompute,read,share,replay,step,accuracy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per arm (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--no-s3", dest="s3", action="store_false")
    parser.add_argument("--work", help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    only = set(args.only.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="raylg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAYLG_FEATURE_CACHE", str(work / "cache"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; scratch {work}", flush=True)
    have = (work / "local" / "manifest.json").exists()
    local = bench_precompute(args, work) if "precompute" in only or not have else str(work / "local")
    if "read" in only:
        bench_read(args, local, work)
    if "share" in only:
        bench_share(args, local)
    if "replay" in only:
        bench_replay(args, local)
    if "step" in only:
        bench_step(args, local)
    if "accuracy" in only:
        bench_accuracy(args, local, work)


if __name__ == "__main__":
    main()
