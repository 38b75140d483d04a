"""The training step without per-step host syncs: the engine reads the device once per log interval,
its epoch sums equal the old per-step float() sums bit for bit, and the NaN guard names the step and
terms and rolls the weights and optimizer state back to the last check."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raylg import engine

ENGINE_FILE = engine.__file__


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 3)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, batch):
        logits = self.lin(batch["image"])
        self.seen += 1
        ce = F.cross_entropy(logits, batch["label"]) * batch.get("scale", 1.0)
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        return {"losses": {"ce": ce, "aux": 0.1 * logits.pow(2).mean()}, "stats": {"acc": acc, "const": 2.0}}

    def predict(self, x):
        return self.lin(x)


def batches(n, bad_at=None, size=8):
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        b = {"image": torch.randn(size, 6, generator=g), "label": torch.randint(0, 3, (size,), generator=g),
             "index": torch.arange(size)}
        if i == bad_at:
            b["scale"] = torch.tensor(float("nan"))
        out.append(b)
    return out


def run(n, log_every, bad_at=None, max_batches=0):
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    m, step = engine.train_one_epoch(model, batches(n, bad_at), opt, lr_at=lambda s: 1e-2 * (1 - s / 100), step=0,
                                     device=torch.device("cpu"), log_every=log_every, max_batches=max_batches)
    return model, opt, m, step


class SyncCounter:
    """Counts host reads of tensor values (item, float, int, bool, tolist, numpy) made by engine.py itself."""

    NAMES = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)

            def wrapped(t, *a, _orig=orig, **k):
                if sys._getframe(1).f_code.co_filename == ENGINE_FILE:
                    self.count += 1
                return _orig(t, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, wrapped)


def test_host_reads_once_per_log_interval_not_per_step(monkeypatch):
    counts = {}
    for n in (20, 40):
        c = SyncCounter(monkeypatch)
        run(n, log_every=20)
        counts[n] = c.count
        monkeypatch.undo()
    # per interval: one read (the NaN flag, the interval's loss); per epoch: the last check and the sums
    assert counts[20] == 1 + 2 and counts[40] == 2 + 2, counts


def test_epoch_sums_equal_the_per_step_float_sums():
    """The old engine added float(v) * n per term per step on the host; the device float64 sums must be
    the same numbers, not just close."""
    model, _, m, step = run(13, log_every=5)
    ref_model = Toy()
    opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    sums, seen = {}, 0
    for i, b in enumerate(batches(13)):
        for g in opt.param_groups:
            g["lr"] = 1e-2 * (1 - i / 100)
        out = ref_model(b)
        loss = sum(out["losses"].values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n = b["label"].shape[0]
        seen += n
        for k, v in out["losses"].items():
            sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + float(v.detach()) * n
        for k, v in out["stats"].items():
            sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + float(v) * n
        sums["train/loss"] = sums.get("train/loss", 0.0) + float(loss.detach()) * n
    assert step == 13
    for k, v in sums.items():
        assert m[k] == v / seen, k
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters()))


def test_nan_guard_names_the_step_and_rolls_back_to_the_last_check():
    good, good_opt, _, _ = run(8, log_every=4, max_batches=4)  # the state at the check of step 4
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(engine.NonFiniteLoss) as e:
        engine.train_one_epoch(model, batches(12, bad_at=6), opt, lr_at=lambda s: 1e-2 * (1 - s / 100), step=0,
                               device=torch.device("cpu"), log_every=4)
    msg = str(e.value)
    assert "non-finite loss at step 6 (lr 0.0094)" in msg and "'ce': nan" in msg and "'aux': " in msg
    assert "rolled back to step 4" in msg
    for a, b in zip(model.parameters(), good.parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)
    assert torch.equal(model.seen, good.seen)  # buffers too
    for p, q in zip(model.parameters(), good.parameters()):
        sa, sb = opt.state[p], good_opt.state[q]
        assert all(torch.equal(sa[k], sb[k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_nan_in_the_first_interval_restores_the_initial_state():
    model = Toy()
    init = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(engine.NonFiniteLoss, match="step 1 "):
        engine.train_one_epoch(model, batches(5, bad_at=1), opt, lr_at=lambda s: 1e-2, step=0,
                               device=torch.device("cpu"), log_every=50)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), init))
    assert len(opt.state) == 0  # as if never stepped: the next step starts AdamW afresh


def test_evaluate_sums_on_the_device():
    model = Toy()
    bs = batches(5)
    m = engine.evaluate(model, bs, device=torch.device("cpu"))
    with torch.no_grad():
        logits = torch.cat([model.lin(b["image"]) for b in bs])
        y = torch.cat([b["label"] for b in bs])
    assert m["val/top1"] == 100.0 * float((logits.argmax(1) == y).sum()) / len(y)
    with torch.no_grad():
        ref = sum(float(F.cross_entropy(model.lin(b["image"]), b["label"], reduction="sum")) for b in bs) / len(y)
    assert math.isclose(m["val/loss"], ref, rel_tol=0, abs_tol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch's sync debug mode)")
def test_no_cuda_sync_between_checks():
    """On CUDA, torch's sync debug mode reports every synchronising call: one per log interval."""
    import warnings

    model = Toy().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = [{k: v.cuda() if k != "index" else v for k, v in b.items()} for b in batches(40)]
    engine.train_one_epoch(model, data[:2], opt, lr_at=lambda s: 1e-2, step=0, device=torch.device("cuda"), log_every=20)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            engine.train_one_epoch(model, data, opt, lr_at=lambda s: 1e-2, step=0, device=torch.device("cuda"), log_every=20)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [x for x in w if "synchroniz" in str(x.message)]
    assert len(syncs) <= 2 + 2, [str(x.message) for x in syncs]


def test_train_step_is_the_epochs_step():
    """engine.train_step (what the benchmarks time) updates the weights exactly as train_one_epoch does."""
    model, _, _, _ = run(3, log_every=2)
    alone = Toy()
    opt = torch.optim.AdamW(alone.parameters(), lr=1e-2)
    for s, b in enumerate(batches(3)):
        for group in opt.param_groups:
            group["lr"] = 1e-2 * (1 - s / 100)
        loss, terms, stats = engine.train_step(alone, b, opt, device=torch.device("cpu"))
        assert sorted(terms) == ["aux", "ce"] and sorted(stats) == ["acc", "const"] and torch.isfinite(loss)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), alone.state_dict().values()))
