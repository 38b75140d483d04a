"""On a CUDA GPU; every test here is skipped where torch sees none.

DDP on NCCL with one GPU (a plain process group and a Ray Train worker), bf16 autocast, the
device pipeline on the GPU against the same draws on the CPU, a 2-epoch LG run, a compiled run,
and two trials packed on one GPU (resources.gpus_per_worker: 0.5), as Train runs and in-process.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import RayHead, serving, tiny_config
from raylg import config as config_lib, data, engine, precision as precision_lib
from raylg.data import device as device_data
from raylg.fit import _loader, fit, setup

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
              pytest.mark.slow]

CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def gpu_ray_head(tmp_path_factory):
    """A Ray head that offers this machine's GPUs (the session's head offers none); these tests keep
    their runs in local folders, so it needs no object store."""
    with serving(RayHead(tmp_path_factory.mktemp("gpu-ray"), num_gpus=torch.cuda.device_count())) as head:
        yield head


def _bf16_native() -> bool:
    return torch.cuda.get_device_capability(CUDA)[0] >= 8


def test_auto_precision_is_bf16_and_a_step_runs_in_autocast(tmp_path):
    resolved = precision_lib.resolve("auto", CUDA, warn=False)
    assert resolved.precision == ("bf16" if _bf16_native() else "fp32")
    if resolved.precision != "bf16":
        pytest.skip(f"bf16 is not native on {torch.cuda.get_device_name(CUDA)} (sm < 80)")
    cfg = tiny_config(tmp_path)
    task = setup(cfg).task.to(CUDA)
    x = torch.randn(8, 1, 32, 32, device=CUDA)
    batch = {"image": x, "label": torch.randint(0, 10, (8,), device=CUDA)}
    with precision_lib.autocast(CUDA, "bf16"):
        logits = task.student(x)
        out = task(batch)
    assert logits.dtype == torch.bfloat16  # the matmuls ran in bf16
    loss = sum(out["losses"].values())
    loss.backward()
    grads = [p.grad for p in task.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)  # fp32 weights and grads


def test_device_pipeline_on_the_gpu_draws_what_the_cpu_draws(tmp_path):
    cfg = tiny_config(tmp_path, **{"data.pipeline": "device"})
    bundle = data.build(cfg.data)
    pipe = device_data.plan(cfg.data, bundle, CUDA)
    assert pipe.pipeline == "device", pipe.why
    gpu = device_data.DeviceTrainData(bundle.train, pipe.program, CUDA, batch_size=64, seed=3)
    cpu = device_data.DeviceTrainData(bundle.train, device_data.plan(cfg.data, bundle, torch.device("cpu")).program,
                                      torch.device("cpu"), batch_size=64, seed=3)
    assert gpu.images.device.type == "cuda" and gpu.images.dtype == torch.uint8  # the split lives on the GPU as uint8
    for loader in (gpu, cpu):
        loader.set_epoch(1)
    g, c = next(iter(gpu)), next(iter(cpu))
    assert g["image"].device.type == "cuda" and g["image"].shape == (64, 1, 32, 32) and g["image"].dtype == torch.float32
    assert torch.equal(g["label"].cpu(), c["label"].cpu())
    # the same per-sample parameters (drawn on the host) give the same pixels, up to float rounding on the GPU
    assert (g["image"].cpu() - c["image"]).abs().max().item() < 0.05


@pytest.mark.parametrize("arm", ["baseline", "lg"])
def test_device_pipeline_and_real_task_sync_once_per_epoch_not_per_step(tmp_path, digits_teacher, arm):
    """torch's sync debug mode counts every synchronising call. An epoch of the real task (student, with
    LG the teacher and aligners) fed by the device pipeline makes as many at 12 steps as at 3: none per step."""
    import warnings

    over = {"data.pipeline": "device", "run.device": "cuda", "run.max_train_batches": 0}
    if arm == "lg":
        over["teacher.path"] = str(digits_teacher)
    cfg = tiny_config(tmp_path, **over)
    s = setup(cfg)
    pipe = device_data.plan(cfg.data, s.bundle, CUDA)
    assert pipe.pipeline == "device", pipe.why
    task = s.task.to(CUDA)
    if s.targets is not None:
        s.targets.to(CUDA)
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    loader = device_data.DeviceTrainData(s.bundle.train, pipe.program, CUDA, batch_size=32, seed=1)
    prec = precision_lib.resolve("auto", CUDA, warn=False).precision
    assert len(loader) >= 12, len(loader)

    def syncs(epoch: int, steps: int) -> list[str]:
        loader.set_epoch(epoch)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                engine.train_one_epoch(task, loader, opt, lr_at=lambda _: 1e-3, step=0, device=CUDA, precision=prec,
                                       max_batches=steps, log_every=1000)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return [f"{x.filename}:{x.lineno}: {x.message}" for x in w if "synchroniz" in str(x.message)]

    syncs(0, 2)  # warm-up: first kernels, pinned buffers, crop tables
    few, many = syncs(1, 3), syncs(2, 12)
    assert few, "sync debug mode reported nothing, not even the epoch's one read of its sums"
    assert len(many) == len(few), "\n".join(many)


def test_ddp_on_nccl_with_one_gpu(tmp_path):
    """A process group on NCCL (world size 1), the task in DistributedDataParallel, one epoch of the
    engine (its end-of-epoch sums go through NCCL's all_reduce) and an evaluation."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cfg = tiny_config(tmp_path)
    s = setup(cfg)
    dist.init_process_group("nccl", store=dist.FileStore(str(tmp_path / "pg"), 1), rank=0, world_size=1)
    try:
        task = s.task.to(CUDA)
        model = DistributedDataParallel(task, device_ids=[CUDA.index])
        opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
        loader = _loader(s.bundle.train, 64, cfg, train=True, seed=1)
        prec = precision_lib.resolve("auto", CUDA, warn=False).precision
        before = [p.detach().clone() for p in task.parameters()]
        m, step = engine.train_one_epoch(model, loader, opt, lr_at=lambda _: 1e-3, step=0, device=CUDA, precision=prec,
                                         max_batches=4)
        assert step == 4 and torch.isfinite(torch.tensor(m["train/loss"])) and m["images_per_s"] > 0
        assert any(not torch.equal(a, b) for a, b in zip(before, task.parameters()))  # the optimizer stepped
        ev = engine.evaluate(model, _loader(s.bundle.val, 512, cfg, train=False, seed=0), device=CUDA, precision=prec)
        assert 0.0 <= ev["val/top1"] <= 100.0
        t = torch.ones(1, device=CUDA)
        dist.all_reduce(t)
        assert t.item() == 1.0
    finally:
        dist.destroy_process_group()


def test_one_worker_ray_train_run_on_the_gpu(gpu_ray_head, tmp_path):
    """A Ray Train trial with one GPU worker: the NCCL backend, the loop on cuda, the device pipeline."""
    from raylg.ray.trainer import make_trainer

    cfg = tiny_config(tmp_path, **{"data.pipeline": "device"})
    trainer = make_trainer({"cfg": config_lib.flatten(cfg), "run_dir": str(tmp_path / "run"), "tracking": None},
                           name="gpu", storage=str(tmp_path / "store"), workers=1, cpus_per_worker=1, gpus_per_worker=1,
                           failures=0)
    trainer.fit()
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert info["device"].startswith("cuda") and info["resolved"]["data.pipeline_resolved"] == "device"
    assert info["resolved"]["run.precision_resolved"] == ("bf16" if _bf16_native() else "fp32")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["best"]["val/top1"] >= 0


def test_two_epoch_lg_run_on_the_gpu(tmp_path, digits_teacher):
    cfg = tiny_config(tmp_path, **{"teacher.path": str(digits_teacher), "run.max_train_batches": 0, "run.device": "cuda"})
    summary = fit(cfg, tmp_path / "lg")
    assert summary["epochs"] == 2
    info = json.loads((tmp_path / "lg" / "data.json").read_text())
    assert info["device"].startswith("cuda") and info["teacher"]["sha256"]
    rows = [json.loads(x) for x in (tmp_path / "lg" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["train/loss"])) for r in rows)
    assert rows[1]["train/lg"] < rows[0]["train/lg"]  # the student's maps move towards the teacher's


def test_compiled_run_on_the_gpu_reports_its_compile_time(tmp_path):
    cfg = tiny_config(tmp_path, **{"run.compile": True, "run.device": "cuda", "schedule.epochs": 1,
                                   "schedule.warmup_epochs": 0})
    summary = fit(cfg, tmp_path / "compiled")
    rows = [json.loads(x) for x in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["compile_time_s"] > 0 and summary["compile_time_s"] == rows[0]["compile_time_s"]
    assert torch.isfinite(torch.tensor(rows[0]["train/loss"]))


def test_a_gpu_share_caps_the_trials_memory(tmp_path):
    """resources.gpus_per_worker: 0.5 caps the trial's caching allocator at half the GPU and sizes the device
    pipeline's budget from that half."""
    from raylg.ray.trainer import _gpu_share

    total = torch.cuda.get_device_properties(CUDA).total_memory
    try:
        cfg = _gpu_share(tiny_config(tmp_path), 0.5, CUDA)
        assert cfg.data.device_budget_mib == pytest.approx(0.25 * 0.5 * total / 2**20)
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(0.6 * total), dtype=torch.uint8, device=CUDA)
        x = torch.empty(int(0.3 * total), dtype=torch.uint8, device=CUDA)  # within its half
        del x
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, CUDA)
        torch.cuda.empty_cache()


@pytest.mark.parametrize("workers", [1, 0])
def test_two_trials_share_one_gpu(gpu_ray_head, tmp_path, workers):
    """gpus_per_worker 0.5: two trials on the one GPU at the same time, each capped at its share of the
    memory; as 1-worker Train runs, and as in-process trials (workers: 0: the loop in Tune's process)."""
    from raylg.ray import spec as spec_lib, sweep as sweep_lib
    from test_packing import overlapping, write_sweep

    name = f"halves{workers}"
    path = write_sweep(tmp_path, name, {"optim.lr": {"grid": [2e-3, 1e-3]}}, max_concurrent=2,
                       set={"schedule.epochs": 5, "schedule.warmup_epochs": 1, "run.max_train_batches": 0},
                       resources={"workers": workers, "cpus_per_worker": 1, "gpus_per_worker": 0.5})
    rows = sweep_lib.run(spec_lib.load(path))
    assert [r["status"] for r in rows] == ["FINISHED", "FINISHED"]
    trials = sorted((tmp_path / "store" / name / "trials").iterdir())
    total_mib = torch.cuda.get_device_properties(CUDA).total_memory / 2**20
    for d in trials:
        assert json.loads((d / "data.json").read_text())["device"].startswith("cuda")
        saved = config_lib.load(d / "config.yaml")  # the trial's share: a quarter of half the GPU for the split
        assert saved.data.device_budget_mib == pytest.approx(0.25 * 0.5 * total_mib)
    # both trials held their half of the GPU at once: each was in its loop while the other trained
    assert overlapping(trials, start="loop_start"), f"the two half-GPU trials (workers: {workers}) did not overlap"
