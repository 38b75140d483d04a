"""Run the teacher once over the clean training images and publish the maps as shards.

Shards are written under temporary names in a staging directory, hashed, then published
(rename on disk, checksummed PUT on S3) under names that carry this write's id, so a
manifest from an earlier write stays valid while this one runs. The manifest is written
last, after every listed shard is checked at its destination: a reader never sees a
manifest that lists a partial shard. After publishing, shards no manifest lists (from
interrupted or older writes) are deleted. An exception deletes what this write published.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from raylg import storage, teacher as teacher_lib
from raylg.data.transforms import clean_transform
from raylg.features import manifest as mf
from raylg.features.errors import FeatureError
from raylg.files import sha256_file

DEFAULT_SHARD_MB = 256


def precompute(teacher_path: str, bundle, out: str, *, stages: list[int] | None = None, shard_mb: float = DEFAULT_SHARD_MB,
               batch_size: int = 256, device: str = "cpu", num_workers: int = 0, progress: bool = True,
               log: Callable[[str], None] = print) -> dict:
    """Write the teacher's stage maps of ``bundle.train`` (clean images) to ``out``; returns the manifest
    plus timing figures under "stats" (not stored)."""
    model, card = teacher_lib.load(teacher_path)
    if card["in_chans"] != bundle.in_chans or card["num_classes"] != bundle.num_classes:
        raise FeatureError(f"teacher {teacher_path!r} takes {card['in_chans']} channels / {card['num_classes']} classes "
                           f"but {bundle.name} has {bundle.in_chans} / {bundle.num_classes}")
    if str(out).endswith(".json"):
        raise FeatureError(f"--out {out!r}: give the directory or s3:// prefix; the manifest is written inside it")
    storage.check_bucket(out)
    model.eval().to(device)
    size = card["img_size"]
    view = bundle.view("train", clean_transform(size, bundle.mean, bundle.std, bundle.cfg.interpolation))
    with torch.no_grad():
        shapes = [tuple(t.shape[1:]) for t in model.forward_stages(view[0]["image"][None].to(device))]
    chosen = list(range(len(shapes))) if stages is None else list(stages)
    bad = [s for s in chosen if not 0 <= s < len(shapes)]
    if bad or not chosen:
        raise FeatureError(f"stages {chosen}: the teacher has stages 0..{len(shapes) - 1}")
    stage_meta = [{"stage": s, "column": mf.stage_column(s), "shape": list(shapes[s]), "dtype": "float16"} for s in chosen]
    schema = mf.arrow_schema(stage_meta)
    row_bytes = sum(math.prod(s["shape"]) * 2 for s in stage_meta) + 16
    per_shard = max(1, int(shard_mb * 2**20) // row_bytes)

    write_id = uuid.uuid4().hex[:8]
    staging = Path(out) / f".staging-{write_id}" if not storage.is_s3(out) else Path(tempfile.mkdtemp(prefix="raylg-features-"))
    staging.mkdir(parents=True, exist_ok=True)
    published: list[str] = []
    shards: list[dict] = []
    loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(view), desc="teacher features", unit="img", dynamic_ncols=True)
    t0, t_teacher = time.perf_counter(), 0.0
    buf = _Buffer(per_shard, stage_meta)
    try:
        for batch in loader:
            t1 = time.perf_counter()
            with torch.no_grad():
                maps = model.forward_stages(batch["image"].to(device))
            arrays = {s["stage"]: maps[s["stage"]].to(torch.float16).cpu().numpy() for s in stage_meta}
            t_teacher += time.perf_counter() - t1
            idx, lab = batch["index"].numpy(), batch["label"].numpy()
            start = 0
            while start < len(idx):
                take = buf.add(idx[start:], lab[start:], {k: v[start:] for k, v in arrays.items()})
                start += take
                if buf.full:
                    shards.append(_publish(buf, len(shards), write_id, schema, staging, out, published))
            if bar is not None:
                bar.update(len(idx))
        if buf.n:
            shards.append(_publish(buf, len(shards), write_id, schema, staging, out, published))
        for shard in shards:  # every listed shard must be at its destination, whole
            got = storage.size(storage.join(out, shard["name"]))
            if got != shard["bytes"]:
                raise FeatureError(f"published shard {shard['name']!r} holds {got} bytes at {out!r}, expected {shard['bytes']}")
        elapsed = time.perf_counter() - t0
        fp = bundle.fingerprint("train")
        m = {
            "format": mf.FORMAT, "version": mf.VERSION, "write_id": write_id,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "file_format": mf.FILE_FORMAT,
            "rows": sum(s["rows"] for s in shards), "bytes": sum(s["bytes"] for s in shards),
            "shards": shards,
            "columns": {"index": "int64 (dataset source index: the key)", "label": "int64",
                        **{s["column"]: f"fixed_size_list<float16>[{math.prod(s['shape'])}] (C x h x w, C-order)"
                           for s in stage_meta}},
            "stages": stage_meta,
            "arrow_schema": schema.to_string(show_schema_metadata=False),
            "teacher": {"sha256": card["sha256"], "arch": card["arch"], "in_chans": card["in_chans"],
                        "num_classes": card["num_classes"], "img_size": size, "stage_channels": card["stage_channels"],
                        "val_top1": card.get("val_top1"), "fingerprint": card["fingerprint"], "bn_mode": "eval",
                        "weights": Path(teacher_path).name},
            "input": {"img_size": size, "resize": "whole source image resized to img_size x img_size (no crop, no flip)",
                      "interpolation": bundle.cfg.interpolation, "mean": list(bundle.mean), "std": list(bundle.std)},
            "dataset": fp,
            "augmentation": mf.AUGMENTATION,
        }
        storage.write_bytes(mf.manifest_uri(out), mf.dumps(m))
    except BaseException:
        for uri in published:  # best effort: leave no shard of this write behind
            try:
                storage.delete(uri)
            except Exception:
                pass
        raise
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    _collect_garbage(out, {s["name"] for s in shards})
    m["stats"] = {"images": m["rows"], "seconds": elapsed, "images_per_s": m["rows"] / elapsed,
                  "teacher_images_per_s": m["rows"] / max(t_teacher, 1e-9), "bytes_per_image": m["bytes"] / max(m["rows"], 1)}
    return m


class _Buffer:
    """One shard's rows, filled batch by batch."""

    def __init__(self, capacity: int, stage_meta: list[dict]):
        self.capacity, self.meta, self.n = capacity, stage_meta, 0
        self.index = np.empty(capacity, np.int64)
        self.label = np.empty(capacity, np.int64)
        self.maps = {s["stage"]: np.empty((capacity, math.prod(s["shape"])), np.float16) for s in stage_meta}

    @property
    def full(self) -> bool:
        return self.n == self.capacity

    def add(self, idx, lab, arrays) -> int:
        k = min(len(idx), self.capacity - self.n)
        sl = slice(self.n, self.n + k)
        self.index[sl], self.label[sl] = idx[:k], lab[:k]
        for s, a in arrays.items():
            self.maps[s][sl] = a[:k].reshape(k, -1)
        self.n += k
        return k

    def take(self, schema: pa.Schema) -> pa.RecordBatch:
        n = self.n
        cols = [pa.array(self.index[:n]), pa.array(self.label[:n])]
        for s in self.meta:
            flat = self.maps[s["stage"]][:n].reshape(-1)
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float16()), math.prod(s["shape"])))
        self.n = 0
        return pa.record_batch(cols, schema=schema)


def _publish(buf: _Buffer, k: int, write_id: str, schema: pa.Schema, staging: Path, out: str, published: list[str]) -> dict:
    batch = buf.take(schema)
    name = f"{mf.SHARD_PREFIX}{k:05d}-{write_id}{mf.SHARD_SUFFIX}"
    tmp = staging / f"{name}.partial"
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(batch)
    digest = sha256_file(tmp)
    nbytes = tmp.stat().st_size
    uri = storage.join(out, name)
    published.append(uri)
    storage.publish_file(tmp, uri, digest)
    idx = batch.column("index").to_numpy()
    return {"name": name, "rows": len(batch), "bytes": nbytes, "sha256": digest,
            "index_min": int(idx.min()), "index_max": int(idx.max())}


def _collect_garbage(out: str, keep: set[str]) -> None:
    """Delete shards no manifest lists and leftover staging directories (interrupted writes)."""
    for name in storage.list_names(out):
        if name.startswith(mf.SHARD_PREFIX) and name.endswith(mf.SHARD_SUFFIX) and name not in keep:
            storage.delete(storage.join(out, name))
    if not storage.is_s3(out):
        for p in Path(out).glob(".staging-*"):
            shutil.rmtree(p, ignore_errors=True)
