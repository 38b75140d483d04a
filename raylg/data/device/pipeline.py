"""The split on the device: choosing the pipeline (budget, support), the training batches, the cached
eval splits."""

from __future__ import annotations

import math
import sys
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
# Ops run on chunks of whole batches of about this many output values (CPU, CUDA): a batch of
# 128 images at 32 px is a few hundred small ops whose dispatch costs more than their arithmetic.
CHUNK_ELEMENTS = (1 << 20, 1 << 25)
WORK_MIN = 32  # px: the smallest size the ops run at when the output is enlarged (see DeviceTrainData._work_size)
TABLE_ELEMENTS = 1 << 23  # crop matrices for every integer box, when they fit this many floats per axis


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


class OutputPool:
    """Batch-sized output tensors that a CPU epoch reuses once nothing holds them any more.

    On a CPU a large new tensor is, as often as not, fresh pages from the kernel, faulted in and
    zeroed on first write: for 128 x 224 x 224 batches that cost as much as the augmentation itself
    (an epoch of 4,090 images at 224 px took about 131,000 minor page faults when slow, 6,000 when fast).
    get() returns a pooled tensor only when nothing else holds it: no other Python reference to the
    tensor and no other tensor on its storage (torch's own count, which a batch or any view of it
    that the caller keeps raises); else a new tensor, pooled while there is room. On a GPU (its
    caching allocator reuses blocks already), or where torch's count is unreadable, get() gives
    None: a new tensor each time."""

    SIZE = 3

    def __init__(self, device: torch.device):
        self.pool: list[torch.Tensor] = [torch.empty(1)]  # a probe: what _free sees of a tensor only the pool holds
        self.refs = sys.getrefcount(self.pool[0])
        self.enabled = torch.device(device).type == "cpu" and self._free(0)  # False where torch's count is unreadable
        self.pool.clear()

    @staticmethod
    def _count(t: torch.Tensor) -> int:
        """Tensors on t's storage (the storage object made to ask is not counted); -1 where unknown."""
        count = getattr(torch._C, "_storage_Use_Count", None)
        return -1 if count is None else count(t.untyped_storage()._cdata) - 1

    def _free(self, i: int) -> bool:
        return sys.getrefcount(self.pool[i]) == self.refs and self._count(self.pool[i]) == 1

    def get(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        if not self.enabled:
            return None
        shape = tuple(int(d) for d in shape)
        for i in range(len(self.pool)):
            if tuple(self.pool[i].shape) == shape and self._free(i):
                return self.pool[i]
        t = torch.empty(shape)
        if len(self.pool) < self.SIZE:
            self.pool.append(t)
        return t


class DeviceTrainData:
    """The training split on the device; iterating yields augmented batches
    {"image", "label", "index" (host), "crop", "flip"} like the loader's."""

    def __init__(self, dataset, program: Program, device: torch.device, *, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool | None = None, images: np.ndarray | None = None,
                 chunk_batches: int | None = None, work_size: tuple[int, int] | None = None):
        self.dataset, self.program = dataset, program
        self.device = torch.device(device)
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), int(rank), int(world_size)
        self.drop_last = (len(dataset) >= batch_size) if drop_last is None else drop_last
        a = decode(dataset) if images is None else images
        self.images = torch.from_numpy(a).to(self.device)
        self.labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64)).to(self.device)
        self.source_index = np.asarray(dataset.indices, dtype=np.int64)
        self.n, self.C, self.H, self.W = self.images.shape
        fill = program.randaug.fill if program.randaug is not None else (0.0,) * self.C
        self.fill = torch.tensor(fill, dtype=torch.float32, device=self.device)
        self.epoch = 0
        self.per_rank = math.ceil(self.n / self.world_size)
        if chunk_batches is None:  # whole batches per chunk of ops: ~CHUNK_ELEMENTS output values
            per_batch = self.batch_size * self.C * program.size[0] * program.size[1]
            chunk_batches = max(1, CHUNK_ELEMENTS[self.device.type == "cuda"] // per_batch)
        self.chunk_batches = int(chunk_batches)
        self.work = tuple(work_size) if work_size is not None else self._work_size()
        self._tables: dict = {}
        self._outputs = OutputPool(self.device)
        self._up = None
        if self.work != program.size:  # the final resize: bicubic/bilinear matrices, normalised values, no rounding
            zeros = torch.zeros(1, device=self.device)
            (wh, ww), (oh, ow) = self.work, program.size
            self._up = (resample_matrix(zeros, zeros + wh, wh, oh, program.interpolation)[0],
                        resample_matrix(zeros, zeros + ww, ww, ow, program.interpolation)[0].T.contiguous())
        # ToTensor + Normalize as one op, x * scale + shift; the normalised values of uint8's 0 and 255
        mean = torch.tensor(program.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(program.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std
        self._bounds = ([(0.0 - m) / s for m, s in zip(program.mean, program.std)],
                        [(1.0 - m) / s for m, s in zip(program.mean, program.std)])

    def _work_size(self) -> tuple[int, int]:
        """Where the ops between the crop and the normalisation run. When the output is an enlargement
        (e.g. 28 or 32 px images trained at 224), RandAugment / colour jitter run at the larger of the
        source's size and WORK_MIN px and one resize brings the batch to the output size: the ops then
        cost what they cost at the source's size, not 50x more."""
        p = self.program
        out = p.size
        if p.geometry != "rrc" or (p.randaug is None and not p.jitter):
            return out
        side = max(self.H, self.W, WORK_MIN)
        if side * 2 > min(out):
            return out
        return (side, side) if out[0] == out[1] else (max(side, round(side * out[0] / out[1])),
                                                      max(side, round(side * out[1] / out[0])))

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
        wh, ww = self.work
        out: dict[str, Any] = {"pos": pos}
        if p.geometry == "rrc":
            box = draw_rrc(rng, m, self.H, self.W, p.scale, p.ratio)
        else:
            box = np.tile(self._resize_box(), (m, 1))
        out["box"] = box
        out["flip"] = rng.random(m) < p.hflip if p.hflip > 0 else np.zeros(m, bool)
        stages = []
        if p.randaug is not None:
            for name, kind, arg, affine, apply in draw_randaug(rng, p.randaug, m, wh, ww, px_scale=ww / ow):
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
        cb = self.chunk_batches
        chunk = cb * bs
        nc = math.ceil(m / chunk) if m else 0
        K = len(KINDS)
        chunk_of = np.arange(m) // chunk
        groups = []
        for st in d["stages"]:
            key = chunk_of * K + st["kind"]
            order = np.argsort(key, kind="stable")
            counts = np.bincount(key, minlength=nc * K).reshape(nc, K)
            offsets = np.concatenate([[0], np.cumsum(counts.ravel())])[:-1].reshape(nc, K)
            rel = order - chunk_of[order] * chunk
            groups.append((counts, offsets, rel))
        # one host->device copy per epoch
        f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        i64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        t = {"pos": _pin(i64(d["pos"]), dev), "box": _pin(f32(d["box"]), dev), "flip": _pin(torch.from_numpy(d["flip"]), dev),
             "crop": _pin(f32(self.geometry_fractions(d["box"])), dev),
             "arg": [_pin(f32(st["arg"]), dev) for st in d["stages"]],
             "affine": [None if st["affine"] is None else _pin(f32(st["affine"]), dev) for st in d["stages"]],
             "rel": [_pin(i64(g[2]), dev) for g in groups]}
        index_host = torch.from_numpy(self.source_index[d["pos"]])
        for c in range(nc):
            c0 = c * chunk
            sl = slice(c0, min(c0 + chunk, m))
            x = self._augment(c, sl, t, groups, d["erase"][sl] if self.program.erase_prob > 0 else None)
            for lo in range(c0, min(c0 + chunk, m), bs):
                sl = slice(lo, min(lo + bs, m))
                pos = t["pos"][sl]
                yield {"image": x[lo - c0:sl.stop - c0], "label": self.labels.index_select(0, pos), "index": index_host[sl],
                       "crop": t["crop"][sl], "flip": t["flip"][sl]}

    def _table(self, in_size: int, out_size: int, flips: bool) -> torch.Tensor | None:
        """Crop matrices for every integer window (start, length) of a line of in_size pixels, then the
        same flipped when flips: row start * (in_size + 1) + length (+ in_size * (in_size + 1) flipped).
        None when they would pass TABLE_ELEMENTS."""
        key = (in_size, out_size, flips)
        if key not in self._tables:
            n = in_size * (in_size + 1)
            if n * (2 if flips else 1) * out_size * in_size > TABLE_ELEMENTS:
                self._tables[key] = None
            else:
                start, length = np.divmod(np.arange(n), in_size + 1)
                ok = (length >= 1) & (start + length <= in_size)
                start, length = np.where(ok, start, 0), np.where(ok, length, in_size)
                f32 = lambda a: torch.from_numpy(a.astype(np.float32)).to(self.device)  # noqa: E731
                w = resample_matrix(f32(start), f32(length), in_size, out_size, self.program.interpolation)
                self._tables[key] = torch.cat([w, w.flip(1)]) if flips else w
        return self._tables[key]

    def _geometry_matrices(self, box: torch.Tensor, flip: torch.Tensor):
        p = self.program
        oh, ow = self.work
        if p.geometry == "rrc":
            ty, tx = self._table(self.H, oh, False), self._table(self.W, ow, True)
            if ty is not None and tx is not None:
                b = box.to(torch.int64)
                ky = b[:, 0] * (self.H + 1) + b[:, 2]
                kx = b[:, 1] * (self.W + 1) + b[:, 3] + flip.to(torch.int64) * (self.W * (self.W + 1))
                return ty.index_select(0, ky), tx.index_select(0, kx)
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

    def _augment(self, c: int, sl: slice, t: dict, groups, erase: np.ndarray | None) -> torch.Tensor:
        """The images of one chunk (whole batches, in epoch order), augmented and normalised."""
        p = self.program
        pos = t["pos"][sl]
        x = self.images.index_select(0, pos).to(torch.float32)
        wy, wx = self._geometry_matrices(t["box"][sl], t["flip"][sl])
        x = resample(x, wy, wx)
        interp = p.randaug.interpolation if p.randaug is not None else "bicubic"
        for s, (counts, offsets, _) in enumerate(groups):
            arg = t["arg"][s][sl]
            affine = t["affine"][s][sl] if t["affine"][s] is not None else None
            for k in range(1, len(KINDS)):
                n = int(counts[c, k])
                if n == 0:
                    continue
                o = int(offsets[c, k])
                rows = t["rel"][s][o:o + n]
                y = apply_kind(k, x.index_select(0, rows), arg.index_select(0, rows),
                               None if affine is None else affine.index_select(0, rows), self.fill, interp)
                x.index_copy_(0, rows, y)
        x = torch.addcmul(self._shift, x, self._scale)  # ToTensor + Normalize: x / 255, - mean, / std
        if self._up is not None:  # resize to the output: one matmul per axis; clipped to uint8's range as PIL's
            wy, wxt = self._up
            y = torch.matmul(wy, x)
            x = torch.matmul(y, wxt, out=self._outputs.get((*y.shape[:-1], wxt.shape[1])))
            lo, hi = self._bounds
            for ch in range(x.shape[1]):
                x[:, ch].clamp_(lo[ch], hi[ch])
        if erase is not None:  # the boxes are known on the host: fill each erased one, touch nothing else
            for i in np.flatnonzero(erase[:, 2]):
                top, left, h, w = (int(v) for v in erase[i])
                x[i, :, top:top + h, left:left + w] = 0.0
        return x


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
