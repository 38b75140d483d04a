"""The device-resident pipeline against the loader path: each op against PIL, the augmentation
distribution against timm's (crop area and aspect, flip rate, RandAugment op frequencies and
magnitudes, erasing), shuffling/resume determinism and DDP shards, the crop/flip that feature
replay reads, the refusals, and a short LG run on either path."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageEnhance, ImageOps
from scipy import stats

from conftest import TINY, tiny_config
from raylg import config as config_lib, data
from raylg.data import device as D
from raylg.data.dataset import ImageDataset
from raylg.data.source import ArraySplit
from raylg.data.transforms import GeometryCompose, train_transform
from raylg.features import replay
from raylg.fit import fit

RA = "rand-m9-mstd0.5-inc1"
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.3)


def _t(im) -> torch.Tensor:
    a = np.asarray(im).astype(np.float32)
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))[None]


def synthetic(n=64, size=32, rgb=True, seed=0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    shape = (n, size, size, 3) if rgb else (n, size, size)
    return ArraySplit(rng.integers(0, 256, shape, dtype=np.uint8), np.arange(n) % 10)


def device_data(n: int, seed: int):
    """A maker of DeviceTrainData (batch 8, CPU) over n synthetic RGB images with the RandAugment recipe."""
    t = train_transform(data_cfg(), MEAN, STD, 3)
    ds = ImageDataset(synthetic(n=n), np.arange(n), t, "train")
    prog = D.compile_transform(t, 3)
    return lambda **kw: D.DeviceTrainData(ds, prog, torch.device("cpu"), batch_size=8, seed=seed, **kw)


def data_cfg(**over):
    base = {"data.auto_augment": RA, "data.re_prob": 0.25, "data.hflip": 0.5, "data.scale_min": 0.08}
    return config_lib.load(TINY, {**base, **over}).data


# --- the ops against PIL -----------------------------------------------------------------------


def test_point_and_blend_ops_equal_pil_and_warps_are_close():
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
    x = _t(im)
    fill = torch.tensor([128.0, 128.0, 128.0])
    from timm.data import auto_augment as AA

    def op(kind, arg, affine=None):
        return D.apply_kind(D.KIND[kind], x.clone(), torch.tensor([float(arg)]),
                            None if affine is None else torch.tensor(affine, dtype=torch.float32)[None], fill, "bicubic")

    exact = [("autocontrast", 0, ImageOps.autocontrast(im)), ("equalize", 0, ImageOps.equalize(im)),
             ("invert", 0, ImageOps.invert(im)), ("posterize", 2, ImageOps.posterize(im, 2)),
             ("solarize", 100, ImageOps.solarize(im, 100)), ("solarize_add", 90, AA.solarize_add(im, 90))]
    for f in (0.3, 1.7):
        exact += [("color", f, ImageEnhance.Color(im).enhance(f)), ("contrast", f, ImageEnhance.Contrast(im).enhance(f)),
                  ("brightness", f, ImageEnhance.Brightness(im).enhance(f)),
                  ("sharpness", f, ImageEnhance.Sharpness(im).enhance(f))]
    for kind, arg, ref in exact:
        assert torch.equal(op(kind, arg), _t(ref)), kind
    assert torch.equal(op("posterize", 0), torch.zeros_like(x))  # 0 bits: black, as raylg's safe_posterize
    # geometric ops: PIL's matrices, torch's bicubic kernel (a=-0.75 vs PIL's): a few grey levels on noise
    kw = dict(fillcolor=(128, 128, 128), resample=Image.BICUBIC)
    for name, v, ref in (("Rotate", 25.0, AA.rotate(im, 25.0, **kw)), ("ShearX", 0.25, AA.shear_x(im, 0.25, **kw)),
                         ("TranslateYRel", -0.4 * 24, AA.translate_y_rel(im, -0.4, **kw))):
        got = op("warp", 0, D._pil_affine(np.array([name]), np.array([v]), 24, 20)[0])
        d = (got - _t(ref)).abs()
        assert float(d.mean()) < 5 and float((d > 40).float().mean()) < 0.02, name


@pytest.mark.parametrize("src, out, interp", [(8, 32, "bicubic"), (28, 32, "bicubic"), (32, 224, "bicubic"),
                                              (32, 32, "bilinear"), (40, 16, "bilinear")])
def test_crop_resize_flip_matches_pil(src, out, interp):
    """PIL's coefficients (antialiased when shrinking), horizontal then vertical pass: within PIL's
    fixed-point rounding when enlarging (every preset: 8, 28, 32 px sources)."""
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(src)
    im = Image.fromarray(rng.integers(0, 256, (src, src), dtype=np.uint8))
    x = _t(im)
    for _ in range(10):
        h, w = (int(v) for v in rng.integers(1, src + 1, 2))
        i, j = int(rng.integers(0, src - h + 1)), int(rng.integers(0, src - w + 1))
        flip = bool(rng.random() < 0.5)
        ref = TF.resized_crop(im, i, j, h, w, [out, out], TF.InterpolationMode(interp))
        ref = _t(TF.hflip(ref) if flip else ref)
        box = torch.tensor([[i, j, h, w]], dtype=torch.float32)
        wy = D.resample_matrix(box[:, 0], box[:, 2], src, out, interp)
        wx = D.resample_matrix(box[:, 1], box[:, 3], src, out, interp)
        got = D.resample(x.clone(), wy, wx.flip(1) if flip else wx)
        assert float((got - ref).abs().max()) <= 2, (i, j, h, w)


# --- the distribution against timm's --------------------------------------------------------------


class _Record:
    """Wraps timm's RandAugment ops to record which ran (applied) and their first argument."""

    def __init__(self, ra):
        self.calls = []
        for op in ra.ops:
            fn = op.aug_fn

            def wrapped(img, *args, _fn=fn, _name=op.name, **kw):
                self.calls.append((_name, args[0] if args else None))
                return _fn(img, *args, **kw)
            op.aug_fn = wrapped


def test_augmentation_distribution_matches_the_loader():
    """3000 images through timm's transform (the loader) and 3000 device draws: crop area and
    aspect (KS), flip rate, RandAugment op frequencies (chi-square) and rotate magnitudes (KS),
    erasing rate and area (KS). The fixed seeds make every check deterministic."""
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing

    n, size = 3000, 32
    cfg = data_cfg()
    t = train_transform(cfg, MEAN, STD, 3)
    ra = next(s for s in t.transforms if isinstance(s, RandAugment))
    rec = _Record(ra)
    split = synthetic(n=64)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    boxes, flips = [], []
    for k in range(n):
        _, g = t.with_geometry(split.image(k % 64))
        boxes.append(g["crop"].numpy())
        flips.append(g["flip"])
    boxes = np.array(boxes)
    prog = D.compile_transform(t, 3)
    dtd = D.DeviceTrainData(ImageDataset(synthetic(n=n), np.arange(n), t, "train"), prog, torch.device("cpu"),
                            batch_size=64, seed=3)
    d = dtd.draw(0)
    dev_boxes = dtd.geometry_fractions(d["box"])

    def area_aspect(b):
        h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return h * w, np.log(w / h)

    for a, b in zip(area_aspect(boxes), area_aspect(dev_boxes)):
        assert stats.ks_2samp(a, b).pvalue > 1e-3
    assert abs(np.mean(flips) - d["flip"].mean()) < 0.05 and abs(d["flip"].mean() - 0.5) < 0.04
    # RandAugment: which ops ran, per image
    names = [op.name for op in ra.ops]
    loader_counts = np.array([sum(1 for c in rec.calls if c[0] == nm) for nm in names])
    dev_names = np.concatenate([st["name"][st["apply"]] for st in d["stages"]])
    dev_counts = np.array([int((dev_names == nm).sum()) for nm in names])
    assert abs(loader_counts.sum() / n - 1.0) < 0.06 and abs(dev_counts.sum() / n - 1.0) < 0.06  # 2 layers x p 0.5
    assert stats.chi2_contingency(np.stack([loader_counts, dev_counts])).pvalue > 1e-3
    rot_loader = np.abs([c[1] for c in rec.calls if c[0] == "Rotate"])
    rot_dev = np.concatenate([np.abs(st["arg"][st["apply"] & (st["name"] == "Rotate")]) for st in d["stages"]])
    assert stats.ks_2samp(rot_loader, rot_dev).pvalue > 1e-3
    # erasing: the boxes timm's RandomErasing zeroes on a tensor of ones
    er = next(s for s in t.transforms if isinstance(s, RandomErasing))
    areas = []
    for _ in range(n):
        z = er(torch.ones(3, size, size))
        areas.append(float((z[0] == 0).sum()))
    areas = np.array(areas)
    dev_areas = (d["erase"][:, 2] * d["erase"][:, 3]).astype(float)
    assert abs((areas > 0).mean() - (dev_areas > 0).mean()) < 0.04
    assert stats.ks_2samp(areas[areas > 0], dev_areas[dev_areas > 0]).pvalue > 1e-3


def test_device_batches_follow_the_program():
    """One epoch on the CPU: shapes and dtypes of the loader's batch, normalised values, erased zeros,
    crop boxes inside the image; index is the source index, on the host."""
    n = 96
    cfg = data_cfg()
    t = train_transform(cfg, MEAN, STD, 3)
    ds = ImageDataset(synthetic(n=2 * n), np.arange(n) * 2, t, "train")  # source indices 0, 2, 4, ...
    dtd = D.DeviceTrainData(ds, D.compile_transform(t, 3), torch.device("cpu"), batch_size=32, seed=1)
    batches = list(dtd)
    assert len(batches) == len(dtd) == 3
    b = batches[0]
    assert b["image"].shape == (32, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["label"].dtype == torch.int64 and b["crop"].shape == (32, 4) and b["flip"].dtype == torch.bool
    assert b["index"].device.type == "cpu" and set(b["index"].tolist()) <= set(range(0, 2 * n, 2))
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    x = b["image"]
    assert bool(((x >= lo.view(1, 3, 1, 1) - 1e-5) | (x == 0)).all()) and bool((x <= hi.view(1, 3, 1, 1) + 1e-5).all())
    assert ((b["crop"][:, 2:] > b["crop"][:, :2]).all() and (b["crop"] >= 0).all() and (b["crop"] <= 1).all())
    assert torch.equal(b["label"], torch.from_numpy(ds.split.labels[b["index"].numpy()]))


def test_order_is_the_loaders_and_resume_sees_the_same_batches_and_ranks_shard():
    n = 50
    mk = device_data(n, seed=5)
    a, b = mk(), mk()
    a.set_epoch(3), b.set_epoch(3)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["index"], y["index"])
    # the loader's order for the same (seed, epoch): fit seeds its generator with seed * 100_003 + epoch
    g = torch.Generator()
    g.manual_seed(5 * 100_003 + 3)
    loader_order = list(torch.utils.data.RandomSampler(range(n), generator=g))
    assert a.order(3).tolist() == loader_order
    b.set_epoch(4)
    assert not torch.equal(next(iter(a))["image"], next(iter(b))["image"])
    r0, r1 = mk(rank=0, world_size=2), mk(rank=1, world_size=2)
    o0, o1 = r0.order(3), r1.order(3)
    assert len(o0) == len(o1) == 25 and set(o0) | set(o1) == set(range(n)) and not set(o0) & set(o1)
    assert len(r0) == 3  # 25 per rank, batch 8, drop_last (the loader's rule: len(dataset) >= batch)


def test_crop_and_flip_in_the_batch_replay_the_image_geometry():
    """On linear ramps (exact under bilinear/bicubic resampling away from borders) the device image
    equals the clean image with the batch's crop and flip replayed (raylg.features.replay), within
    uint8 rounding; a box one output pixel off is visibly worse."""
    n, src = 48, 64
    yy, xx = (np.mgrid[0:src, 0:src] + 0.5) / src
    rng = np.random.default_rng(0)
    imgs = []
    for _ in range(n):
        a, b = rng.uniform(-1, 1, 2)
        imgs.append((127.5 + 120 * (a * xx + b * yy) / (abs(a) + abs(b))).round().astype(np.uint8))
    split = ArraySplit(np.stack(imgs), np.zeros(n, np.int64))
    cfg = config_lib.load(TINY, {"data.hflip": 0.5, "data.scale_min": 0.4}).data
    t = GeometryCompose([u for u in train_transform(cfg, (0.0,), (1 / 255,), 1).transforms if not isinstance(u, T.ColorJitter)])
    dtd = D.DeviceTrainData(ImageDataset(split, np.arange(n), t, "train"), D.compile_transform(t, 1), torch.device("cpu"),
                            batch_size=n, seed=2)
    batch = next(iter(dtd))
    clean = torch.from_numpy(np.stack(imgs)).float()[batch["index"]][:, None]  # batches are shuffled
    clean32 = torch.nn.functional.interpolate(clean, size=32, mode="bilinear", align_corners=False, antialias=True)
    got = replay(clean32, batch["crop"], batch["flip"])[..., 3:-3, 3:-3]
    ref = batch["image"][..., 3:-3, 3:-3]
    err = (got - ref).abs().amax(dim=(1, 2, 3))
    assert 10 < int(batch["flip"].sum()) < 38
    assert float(err.max()) < 2.5, err
    off = batch["crop"].clone()
    off[:, [1, 3]] += 1.0 / 32 * (off[:, 3] - off[:, 1])[:, None]  # one output pixel off
    shifted = (replay(clean32, off, batch["flip"])[..., 3:-3, 3:-3] - ref).abs().amax(dim=(1, 2, 3))
    assert float(shifted.median()) > 2 * float(err.median())


def test_crop_tables_chunks_and_the_enlarged_path_keep_the_batches():
    """The crop matrices looked up per integer box (flipped rows included) equal the computed ones;
    a chunk of several batches gives the batches one at a time would; at 224 px from 32 px sources
    RandAugment runs at 32 px and one resize enlarges the batch: within uint8's range, erased boxes
    zero, and a few grey levels from the batch whose ops ran at 224 px."""
    n = 64
    mk = device_data(n, seed=4)
    a = mk()
    assert a.work == (32, 32) and a.chunk_batches > 1
    d = a.draw(0)
    box, flip = torch.from_numpy(d["box"]).float(), torch.from_numpy(d["flip"])
    wy, wx = a._geometry_matrices(box, flip)
    ry = D.resample_matrix(box[:, 0], box[:, 2], 32, 32, "bicubic")
    rx = D.resample_matrix(box[:, 1], box[:, 3], 32, 32, "bicubic")
    assert torch.equal(wy, ry) and torch.equal(wx, torch.where(flip.view(-1, 1, 1), rx.flip(1), rx))
    for x, y in zip(mk(), mk(chunk_batches=1)):
        assert torch.allclose(x["image"], y["image"], atol=1e-5) and torch.equal(x["index"], y["index"])
    # the enlarged path: digits at 32 px (real strokes, not noise) trained at 224 px
    from sklearn.datasets import load_digits

    dg = load_digits()
    im = torch.from_numpy(dg.images[:n].astype(np.float32) * 16)[:, None]
    im = torch.nn.functional.interpolate(im, size=32, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    split = ArraySplit(np.repeat(im.numpy().transpose(0, 2, 3, 1), 3, -1), dg.target[:n])
    t224 = train_transform(data_cfg(**{"data.img_size": 224}), MEAN, STD, 3)
    ds224 = ImageDataset(split, np.arange(n), t224, "train")
    p224 = D.compile_transform(t224, 3)
    small = D.DeviceTrainData(ds224, p224, torch.device("cpu"), batch_size=32, seed=1)
    full = D.DeviceTrainData(ds224, p224, torch.device("cpu"), batch_size=32, seed=1, work_size=(224, 224))
    assert small.work == (32, 32) and full.work == (224, 224)
    xs = torch.cat([b["image"] for b in small])
    xf = torch.cat([b["image"] for b in full])
    assert xs.shape == (n, 3, 224, 224)
    lo = ((0 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1)
    hi = ((1 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1)
    assert bool((xs >= lo - 1e-5).all()) and bool((xs <= hi + 1e-5).all())
    e = small.draw(0)["erase"]
    i = int(np.flatnonzero(e[:, 2])[0])
    top, left, h, w = (int(v) for v in e[i])
    assert bool((xs[i, :, top:top + h, left:left + w] == 0).all())
    grey = (xs - xf).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
    assert float(grey.mean()) < 3 and float(grey.mean(dim=(1, 2, 3)).median()) < 2, float(grey.mean())


def test_cpu_output_buffers_are_reused_only_when_nothing_holds_them():
    """On a CPU the enlarged batches go into pooled tensors once the caller has let go of them: batches
    kept (in a list, or a view of one) are never overwritten, and an epoch whose batches are dropped as
    it goes runs on two buffers (the batch in the caller's hands, the one being made)."""
    pool = D.OutputPool(torch.device("cpu"))
    assert pool.enabled and not D.OutputPool(torch.device("meta")).enabled
    a = pool.get((2, 3))
    assert pool.get((2, 3)) is not a  # the very tensor, still held
    view = pool.pool[1].detach()[:1]  # shares the storage, not a view of the pooled tensor (torch's count sees it)
    del a
    b = pool.get((2, 3))
    assert b is pool.pool[0]  # let go of
    c = pool.get((2, 3))
    assert c is pool.pool[2]  # pool[0] held again, pool[1]'s storage still used: a third
    del view
    d = pool.get((2, 3))
    assert d is pool.pool[1]
    e = pool.get((4, 3))
    assert all(e is not t for t in pool.pool) and len(pool.pool) == pool.SIZE  # other shape, pool full: a new one

    n = 96
    im = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    t224 = train_transform(data_cfg(**{"data.img_size": 224}), MEAN, STD, 3)
    ds = ImageDataset(ArraySplit(im.numpy(), np.arange(n) % 10), np.arange(n), t224, "train")
    dtd = D.DeviceTrainData(ds, D.compile_transform(t224, 3), torch.device("cpu"), batch_size=16, seed=2)
    assert dtd.work == (32, 32) and dtd.chunk_batches == 1 and len(dtd) == 6
    copies = [b["image"].clone() for b in dtd]  # dropped as it goes
    kept = list(dtd)  # all held at once: six tensors
    assert len({b["image"].data_ptr() for b in kept}) == 6
    assert all(torch.equal(c, b["image"]) for c, b in zip(copies, kept))
    firsts = [b["image"][:1] for b in dtd]  # a view of each kept
    assert all(torch.equal(c[:1], f) for c, f in zip(copies, firsts))
    del kept, firsts
    assert len({b["image"].data_ptr() for b in dtd}) == 2


# --- choosing, refusing -------------------------------------------------------------------------------


def test_plan_auto_device_and_refusals():
    cpu = torch.device("cpu")
    b = data.build(config_lib.load(TINY, {"data.pipeline": "auto"}).data)
    need = len(b.train) * 1 * 8 * 8
    assert D.plan(b.cfg, b, cpu).pipeline == "device"
    small = config_lib.load(TINY, {"data.pipeline": "auto", "data.device_budget_mib": need / 2**20 / 2}).data
    p = D.plan(small, b, cpu)
    assert p.pipeline == "loader" and "over the budget" in p.why
    strict = config_lib.load(TINY, {"data.pipeline": "device", "data.device_budget_mib": need / 2**20 / 2}).data
    with pytest.raises(D.DevicePipelineError, match=rf"needs {need} bytes \({len(b.train)} images x 1x8x8 uint8\) "
                                                     rf"and {need // 2} bytes are available"):
        D.plan(strict, b, cpu)
    # an augmentation the device does not implement: refused by name for 'device', loader + warning for 'auto'
    for aa, name in (("augmix-m5-w3", "AugMixAugment"), ("rand-m9-t3a", "Desaturate")):
        b2 = data.build(config_lib.load(TINY, {"data.auto_augment": aa, "data.pipeline": "device"}).data)
        with pytest.raises(D.DevicePipelineError, match=rf"does not implement .*{name}"):
            D.plan(b2.cfg, b2, cpu)
        auto = config_lib.load(TINY, {"data.auto_augment": aa, "data.pipeline": "auto"}).data
        with pytest.warns(D.DevicePipelineWarning, match=name):
            assert D.plan(auto, b2, cpu).pipeline == "loader"
    assert D.plan(config_lib.load(TINY, {"data.pipeline": "loader"}).data, b, cpu).pipeline == "loader"


def test_fit_refuses_before_training_and_records_the_choice(tmp_path):
    cfg = tiny_config(tmp_path, **{"data.pipeline": "device", "data.device_budget_mib": 0.01})
    with pytest.raises(D.DevicePipelineError, match="does not fit the device memory budget"):
        fit(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_short_lg_run_reaches_the_same_accuracy_on_either_path(tmp_path, digits_teacher):
    """LG (the digits teacher, beta 2.5), 10 epochs of the digits preset, one seed per path; the bound is
    wide: one seed of each path measured 29.1 (device) and 25.1 (loader); jobs/bench_pipeline.py --accuracy
    runs 3 seeds per path. Both paths clear 20% and differ by less than BOUND points."""
    best = {}
    for pipe in ("device", "loader"):
        cfg = tiny_config(tmp_path, **{"data.pipeline": pipe, "teacher.path": str(digits_teacher), "schedule.epochs": 10,
                                       "run.max_train_batches": 0})
        summary = fit(cfg, tmp_path / pipe)
        best[pipe] = summary["best"]["val/top1"]
        assert json.loads((tmp_path / pipe / "data.json").read_text())["resolved"]["data.pipeline_resolved"] == pipe
        rows = [json.loads(x) for x in (tmp_path / pipe / "metrics.jsonl").read_text().splitlines()]
        assert "train/lg" in rows[0] and rows[-1]["train/ce"] < rows[0]["train/ce"]
    assert min(best.values()) > 20.0, best  # chance: 10% of 179 val images; 20% is 4.5 sd above it
    assert abs(best["device"] - best["loader"]) < BOUND, best


BOUND = 20.0
