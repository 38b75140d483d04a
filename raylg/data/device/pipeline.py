"""The split on the device: choosing the pipeline (budget, support), the training batches, the cached
eval splits."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import DevicePipelineError, DevicePipelineWarning, Unsupported
from .ops import apply_kind, resample, resample_matrix
from .params import _rng, draw_erase, draw_jitter, draw_randaug, draw_rrc
from .program import KINDS, Program, compile_transform

DEFAULT_FRACTION = 0.25  # of the free device memory (CPU: MemAvailable) when data.device_budget_mib is 0


# ---------------------------------------------------------------------------------------
# the split on the device


def decode(dataset) -> np.ndarray:
    """The dataset's images (its indices, in order) as uint8 N x C x H x W; DevicePipelineError when
    their sizes differ."""
    split = dataset.split
    idx = np.asarray(dataset.indices, dtype=np.int64)
    images = getattr(split, "images", None)
    if images is not None:  # ArraySplit: already decoded
        a = images[idx]
        return np.ascontiguousarray(a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2))
    sizes = image_sizes(dataset)
    if len(set(sizes)) > 1:
        first = sizes[0]
        k = next(i for i, s in enumerate(sizes) if s != first)
        raise DevicePipelineError(f"the training images differ in size (source index {int(idx[0])}: {first[0]}x{first[1]}, "
                                  f"source index {int(idx[k])}: {sizes[k][0]}x{sizes[k][1]}); the device pipeline keeps one "
                                  "N x C x H x W tensor; use data.pipeline: loader")
    out = None
    for n, i in enumerate(idx):
        a = np.asarray(split.image(int(i)))
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(idx),) + a.shape, dtype=np.uint8)
        out[n] = a
    return out if out is not None else np.zeros((0, 1, 1, 1), np.uint8)


def image_sizes(dataset) -> list[tuple[int, int]]:
    """(w, h) of each image, from the files' headers (no decode) where the split keeps paths."""
    split = dataset.split
    idx = np.asarray(dataset.indices, dtype=np.int64)
    images = getattr(split, "images", None)
    if images is not None:
        return [(images.shape[2], images.shape[1])] * len(idx)
    from PIL import Image

    out = []
    for i in idx:
        with Image.open(split.paths[int(i)]) as im:
            out.append(im.size)
    return out


def split_bytes(dataset, in_chans: int) -> tuple[int, tuple[int, int, int, int]]:
    """(bytes of the uint8 tensor, its shape) without decoding; sizes from the first image."""
    n = len(dataset)
    if n == 0:
        return 0, (0, in_chans, 0, 0)
    w, h = image_sizes(_first(dataset))[0]
    return n * in_chans * h * w, (n, in_chans, h, w)


def _first(dataset):
    from ..dataset import ImageDataset

    return ImageDataset(dataset.split, dataset.indices[:1], None, dataset.source_split)


def budget(device: torch.device, mib: float = 0) -> tuple[int, str]:
    """(bytes the device pipeline may hold, where the figure comes from)."""
    device = torch.device(device)
    if mib and mib > 0:
        return int(mib * 2**20), f"data.device_budget_mib={mib:g}"
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free * DEFAULT_FRACTION), (f"{DEFAULT_FRACTION:.0%} of the {free / 2**30:.1f} GiB free of "
                                              f"{total / 2**30:.1f} GiB on {device}")
    avail = _mem_available()
    if avail is None:
        return 0, "no /proc/meminfo to size host memory"
    return int(avail * DEFAULT_FRACTION), f"{DEFAULT_FRACTION:.0%} of the {avail / 2**30:.1f} GiB MemAvailable on the host"


def _mem_available() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class Plan:
    pipeline: str  # "device" | "loader"
    why: str
    program: Program | None = None
    need_bytes: int = 0
    budget_bytes: int = 0

    def describe(self) -> dict:
        return {"resolved": self.pipeline, "why": self.why, "train_bytes": self.need_bytes, "budget_bytes": self.budget_bytes,
                "program": self.program.describe() if self.program is not None else None}


def plan(data_cfg, bundle, device: torch.device) -> Plan:
    """Which pipeline a run uses: data.pipeline 'loader' | 'device' | 'auto' (device when the
    split fits the budget and the device implements the transform). 'device' refuses, naming the
    reason; 'auto' falls back to the loader, warning when the reason is an augmentation."""
    want = getattr(data_cfg, "pipeline", "loader")
    if want == "loader":
        return Plan("loader", "data.pipeline: loader")
    ds = bundle.train
    try:
        prog = compile_transform(ds.transform, bundle.in_chans)
    except Unsupported as e:
        msg = (f"the device pipeline does not implement {e.what} (data.auto_augment={data_cfg.auto_augment!r}, "
               f"data.augment={data_cfg.augment}); it implements random-resized crop, flip, RandAugment 'rand-...' "
               "(timm's rand and rand-inc op sets), ColorJitter without hue, random erasing 'const', normalisation")
        if want == "device":
            raise DevicePipelineError(f"data.pipeline is 'device' but {msg}; use data.pipeline: loader (or auto, which "
                                      "falls back to it)") from None
        warnings.warn(f"data.pipeline auto: using the loader, because {msg}", DevicePipelineWarning, stacklevel=2)
        return Plan("loader", f"auto: {e.what} is not implemented on the device")
    need, shape = split_bytes(ds, bundle.in_chans)
    avail, where = budget(device, getattr(data_cfg, "device_budget_mib", 0))
    detail = f"{shape[0]} images x {shape[1]}x{shape[2]}x{shape[3]} uint8"
    if need > avail:
        if want == "device":
            raise DevicePipelineError(f"data.pipeline is 'device' but the training split does not fit the device memory "
                                      f"budget: it needs {need} bytes ({detail}) and {avail} bytes are available ({where}); "
                                      "use data.pipeline: loader (or auto), or raise data.device_budget_mib")
        return Plan("loader", f"auto: the split needs {need} bytes ({detail}), over the budget of {avail} bytes ({where})",
                    prog, need, avail)
    if want == "auto" and getattr(ds.split, "images", None) is None:
        sizes = set(image_sizes(ds))
        if len(sizes) > 1:
            return Plan("loader", f"auto: the training images differ in size ({len(sizes)} sizes)", prog, need, avail)
    return Plan("device", f"{want}: the split needs {need} bytes ({detail}), within the budget of {avail} bytes ({where})",
                prog, need, avail)


def _pin(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class DeviceTrainData:
    """The training split on the device; iterating yields augmented batches
    {"image", "label", "index" (host), "crop", "flip"} like the loader's."""

    def __init__(self, dataset, program: Program, device: torch.device, *, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool | None = None, images: np.ndarray | None = None):
        self.dataset, self.program = dataset, program
        self.device = torch.device(device)
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), int(rank), int(world_size)
        self.drop_last = (len(dataset) >= batch_size) if drop_last is None else drop_last
        a = decode(dataset) if images is None else images
        self.images = torch.from_numpy(a).to(self.device)
        self.labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64)).to(self.device)
        self.source_index = np.asarray(dataset.indices, dtype=np.int64)
        self.n, self.C, self.H, self.W = self.images.shape
        self.mean = torch.tensor(program.mean, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        self.std = torch.tensor(program.std, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        fill = program.randaug.fill if program.randaug is not None else (0.0,) * self.C
        self.fill = torch.tensor(fill, dtype=torch.float32, device=self.device)
        self.epoch = 0
        self.per_rank = math.ceil(self.n / self.world_size)

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def __len__(self) -> int:
        m = self.per_rank
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # --- the epoch's order and parameters, on the host -------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """Positions into the split for this rank's epoch: the loader's shuffle, DistributedSampler's shard."""
        g = torch.Generator()
        g.manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=g).numpy()
        if self.world_size > 1:
            total = self.per_rank * self.world_size
            perm = np.concatenate([perm, np.resize(perm, total - self.n)]) if total > self.n else perm
            perm = perm[self.rank:total:self.world_size]
        return perm

    def draw(self, epoch: int, count: int | None = None) -> dict[str, Any]:
        """Every random parameter of this rank's epoch, as numpy arrays (batch order)."""
        p = self.program
        pos = self.order(epoch)
        if count is not None:
            pos = pos[:count]
        m = len(pos)
        rng = _rng(self.seed, epoch, self.rank)
        oh, ow = p.size
        out: dict[str, Any] = {"pos": pos}
        if p.geometry == "rrc":
            box = draw_rrc(rng, m, self.H, self.W, p.scale, p.ratio)
        else:
            box = np.tile(self._resize_box(), (m, 1))
        out["box"] = box
        out["flip"] = rng.random(m) < p.hflip if p.hflip > 0 else np.zeros(m, bool)
        stages = []
        if p.randaug is not None:
            for name, kind, arg, affine, apply in draw_randaug(rng, p.randaug, m, oh, ow):
                stages.append({"kind": kind, "arg": arg, "affine": affine, "name": name, "apply": apply})
        if p.jitter:
            for kind, arg in draw_jitter(rng, p.jitter, m):
                stages.append({"kind": kind, "arg": arg, "affine": None})
        out["stages"] = stages
        out["erase"] = (draw_erase(rng, m, oh, ow, p.erase_prob, p.erase_area, p.erase_log_aspect) if p.erase_prob > 0
                        else np.zeros((m, 4), np.int64))
        return out

    def _resize_box(self) -> np.ndarray:
        """Resize then centre crop reads the whole image (the matrices select the centre)."""
        return np.array([0, 0, self.H, self.W])

    def _resized(self) -> tuple[int, int]:
        p = self.program
        if isinstance(p.resize, int):
            short, long = (self.H, self.W) if self.H <= self.W else (self.W, self.H)
            new_short, new_long = p.resize, int(p.resize * long / short)
            return (new_short, new_long) if self.H <= self.W else (new_long, new_short)
        return int(p.resize[0]), int(p.resize[1])

    def geometry_fractions(self, box: np.ndarray) -> np.ndarray:
        """Crop boxes [y0, x0, y1, x1] as fractions of the source image (what GeometryCompose records)."""
        p = self.program
        if p.geometry == "rrc":
            i, j, h, w = box.T.astype(np.float64)
            return np.stack([i / self.H, j / self.W, (i + h) / self.H, (j + w) / self.W], 1).astype(np.float32)
        rh, rw = self._resized()
        ch, cw = p.size
        top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
        row = np.array([top / rh, left / rw, (top + ch) / rh, (left + cw) / rw], dtype=np.float32)
        return np.tile(row, (len(box), 1))

    # --- iteration --------------------------------------------------------------------
    def __iter__(self):
        epoch = self.epoch
        nb = len(self)
        m = min(nb * self.batch_size, self.per_rank)
        d = self.draw(epoch, m)
        dev, bs = self.device, self.batch_size
        K = len(KINDS)
        batch_of = np.arange(m) // bs
        groups = []
        for st in d["stages"]:
            key = batch_of * K + st["kind"]
            order = np.argsort(key, kind="stable")
            counts = np.bincount(key, minlength=nb * K).reshape(nb, K)
            offsets = np.concatenate([[0], np.cumsum(counts.ravel())])[:-1].reshape(nb, K)
            rel = order - batch_of[order] * bs
            groups.append((counts, offsets, rel))
        # one host->device copy per epoch
        f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        i64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        t = {"pos": _pin(i64(d["pos"]), dev), "box": _pin(f32(d["box"]), dev), "flip": _pin(torch.from_numpy(d["flip"]), dev),
             "crop": _pin(f32(self.geometry_fractions(d["box"])), dev), "erase": _pin(f32(d["erase"]), dev),
             "arg": [_pin(f32(st["arg"]), dev) for st in d["stages"]],
             "affine": [None if st["affine"] is None else _pin(f32(st["affine"]), dev) for st in d["stages"]],
             "rel": [_pin(i64(g[2]), dev) for g in groups]}
        index_host = torch.from_numpy(self.source_index[d["pos"]])
        for b in range(nb):
            lo, hi = b * bs, min((b + 1) * bs, m)
            sl = slice(lo, hi)
            yield self._batch(b, sl, t, groups, index_host[sl])

    def _geometry_matrices(self, box: torch.Tensor, flip: torch.Tensor):
        p = self.program
        oh, ow = p.size
        if p.geometry == "rrc":
            wy = resample_matrix(box[:, 0], box[:, 2], self.H, oh, p.interpolation)
            wx = resample_matrix(box[:, 1], box[:, 3], self.W, ow, p.interpolation)
        else:  # resize the whole image, keep the centre rows/columns (= Resize then CenterCrop)
            B = box.shape[0]
            rh, rw = self._resized()
            zeros = torch.zeros(B, device=box.device)
            wy = resample_matrix(zeros, torch.full((B,), float(self.H), device=box.device), self.H, rh, p.interpolation)
            wx = resample_matrix(zeros, torch.full((B,), float(self.W), device=box.device), self.W, rw, p.interpolation)
            top, left = int(round((rh - oh) / 2.0)), int(round((rw - ow) / 2.0))
            if top < 0 or left < 0:
                raise DevicePipelineError(f"CenterCrop {p.size} of a {rh}x{rw} image pads; the device pipeline does not pad")
            wy, wx = wy[:, top:top + oh], wx[:, left:left + ow]
        wx = torch.where(flip.view(-1, 1, 1), wx.flip(1), wx)
        return wy, wx

    def _batch(self, b: int, sl: slice, t: dict, groups, index_host: torch.Tensor) -> dict:
        p = self.program
        pos = t["pos"][sl]
        flip = t["flip"][sl]
        x = self.images.index_select(0, pos).to(torch.float32)
        wy, wx = self._geometry_matrices(t["box"][sl], flip)
        x = resample(x, wy, wx)
        interp = p.randaug.interpolation if p.randaug is not None else "bicubic"
        for s, (counts, offsets, _) in enumerate(groups):
            arg = t["arg"][s][sl]
            affine = t["affine"][s][sl] if t["affine"][s] is not None else None
            for k in range(1, len(KINDS)):
                c = int(counts[b, k])
                if c == 0:
                    continue
                o = int(offsets[b, k])
                rows = t["rel"][s][o:o + c]
                y = apply_kind(k, x.index_select(0, rows), arg.index_select(0, rows),
                               None if affine is None else affine.index_select(0, rows), self.fill, interp)
                x.index_copy_(0, rows, y)
        x = x.div_(255.0).sub_(self.mean).div_(self.std)
        if p.erase_prob > 0:
            e = t["erase"][sl]
            H, W = x.shape[-2:]
            yy = torch.arange(H, device=x.device, dtype=torch.float32).view(1, H, 1)
            xx = torch.arange(W, device=x.device, dtype=torch.float32).view(1, 1, W)
            top, left, h, w = (e[:, i].view(-1, 1, 1) for i in range(4))
            mask = (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)
            x = x.masked_fill_(mask.unsqueeze(1), 0.0)
        return {"image": x, "label": self.labels.index_select(0, pos), "index": index_host, "crop": t["crop"][sl],
                "flip": flip}


class DeviceEvalData:
    """An eval split on the device, as the loader's eval transform made it (uint8 after PIL's resize
    and centre crop, normalised per batch with torchvision's ops): the loader's numbers bit for bit."""

    def __init__(self, dataset, device: torch.device, *, batch_size: int, rank: int = 0, world_size: int = 1):
        from torchvision import transforms as T

        steps = list(dataset.transform.transforms)
        norm = next(s for s in steps if isinstance(s, T.Normalize))
        pil = T.Compose([s for s in steps if not isinstance(s, (T.ToTensor, T.Normalize))])
        arrays = []
        for i in dataset.indices:
            a = np.asarray(pil(dataset.split.image(int(i))))
            arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.stack(arrays)).to(self.device)
        self.labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64)).to(self.device)
        self.mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1).to(self.device)
        self.std = torch.as_tensor(norm.std, dtype=torch.float32).view(-1, 1, 1).to(self.device)
        n = len(self.labels)
        idx = np.arange(n)
        if world_size > 1:  # DistributedSampler(shuffle=False): padded with the first items, rank::world
            total = math.ceil(n / world_size) * world_size
            idx = np.concatenate([idx, np.resize(idx, total - n)])[rank:total:world_size]
        self.idx = torch.from_numpy(idx).to(self.device)
        self.batch_size = int(batch_size)

    @staticmethod
    def nbytes_for(dataset, in_chans: int) -> int:
        from torchvision import transforms as T

        crop = next((s for s in dataset.transform.transforms if isinstance(s, T.CenterCrop)), None)
        h, w = crop.size if crop is not None else (0, 0)
        return len(dataset) * in_chans * h * w

    def __len__(self) -> int:
        return math.ceil(len(self.idx) / self.batch_size)

    def __iter__(self):
        for lo in range(0, len(self.idx), self.batch_size):
            sel = self.idx[lo:lo + self.batch_size]
            x = self.images.index_select(0, sel).to(torch.float32).div(255).sub_(self.mean).div_(self.std)
            yield {"image": x, "label": self.labels.index_select(0, sel)}
