"""Read a published feature set: verified shards, memory-mapped, keyed by dataset index.

`FeatureStore.open(uri)` reads the manifest, brings each listed shard to a verified local
file (raylg.features.cache), memory-maps it and checks its schema and row count against the
manifest. Rows are found by the ``index`` column, never by position: `gather(indices, stage)`
returns the maps of those dataset indices as float16 B x C x h x w.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from raylg.features import manifest as mf
from raylg.features.cache import local_shard
from raylg.features.errors import FeatureError


class FeatureStore:
    def __init__(self, manifest: dict, blocks: list[dict], paths: list[Path]):
        self.manifest = manifest
        self.uri = manifest["uri"]
        self.paths = paths
        self.stages = {s["stage"]: s for s in manifest["stages"]}
        self._blocks = blocks  # per record batch: {"shard", "index", "label", stage -> ndarray rows x C x h x w}
        self._lookup(blocks)

    @classmethod
    def open(cls, uri: str) -> "FeatureStore":
        m = mf.read(uri)
        schema = mf.arrow_schema(m["stages"])
        blocks, paths = [], []
        for shard in m["shards"]:
            path = local_shard(m["base"], shard, m["uri"])
            paths.append(path)
            blocks += _read_shard(path, shard, schema, m["stages"])
        return cls(m, blocks, paths)

    def _lookup(self, blocks: list[dict]) -> None:
        top = max((int(b["index"].max()) for b in blocks if len(b["index"])), default=-1)
        self._block = np.full(top + 1, -1, dtype=np.int32)
        self._row = np.full(top + 1, -1, dtype=np.int64)
        for k, b in enumerate(blocks):
            idx = b["index"]
            if idx.size and idx.min() < 0:
                raise FeatureError(f"feature shard {b['shard']!r} holds negative dataset index {int(idx.min())}")
            seen = self._block[idx] >= 0
            if seen.any() or len(np.unique(idx)) != len(idx):
                dup = int(idx[seen][0]) if seen.any() else int(idx[np.argmax(np.bincount(idx))])
                other = blocks[self._block[dup]]["shard"] if self._block[dup] >= 0 else b["shard"]
                raise FeatureError(f"dataset index {dup} appears twice in the features of {self.uri!r} "
                                   f"(shards {other!r} and {b['shard']!r})")
            self._block[idx] = k
            self._row[idx] = np.arange(len(idx))

    @property
    def rows(self) -> int:
        return int(sum(len(b["index"]) for b in self._blocks))

    def indices(self) -> np.ndarray:
        return np.sort(np.concatenate([b["index"] for b in self._blocks])) if self._blocks else np.zeros(0, np.int64)

    def has(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        ok = (indices >= 0) & (indices < len(self._block))
        ok[ok] = self._block[indices[ok]] >= 0
        return ok

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        ok = self.has(indices)
        if not ok.all():
            bad = indices[~ok]
            raise FeatureError(f"dataset index {int(bad[0])} is not in the features of {self.uri!r} "
                               f"({bad.size} of {indices.size} missing)")
        return self._block[indices], self._row[indices]

    def labels(self, indices: np.ndarray) -> np.ndarray:
        blocks, rows = self._locate(indices)
        out = np.empty(len(rows), dtype=np.int64)
        for k in np.unique(blocks):
            m = blocks == k
            out[m] = self._blocks[k]["label"][rows[m]]
        return out

    def gather(self, indices, stage: int) -> torch.Tensor:
        """float16 B x C x h x w maps of ``stage`` for dataset ``indices`` (a copy, in their order)."""
        if stage not in self.stages:
            raise FeatureError(f"teacher stage {stage} is not in the features of {self.uri!r} (stages {sorted(self.stages)})")
        blocks, rows = self._locate(np.asarray(indices))
        out = np.empty((len(rows), *self.stages[stage]["shape"]), dtype=np.float16)
        for k in np.unique(blocks):
            m = blocks == k
            out[m] = self._blocks[k][stage][rows[m]]
        return torch.from_numpy(out)


def _view(arr: pa.Array, dtype) -> np.ndarray:
    """A read-only numpy view of a primitive Arrow array's values (Array.to_numpy would import pandas)."""
    dtype = np.dtype(dtype)
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def _read_shard(path: Path, shard: dict, schema: pa.Schema, stages: list[dict]) -> list[dict]:
    name = shard["name"]
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    except (pa.ArrowInvalid, OSError) as e:
        raise FeatureError(f"feature shard {name!r} is not a readable Arrow IPC file: {e}") from None
    if not reader.schema.equals(schema):
        raise FeatureError(f"feature shard {name!r} has schema {reader.schema.to_string(show_schema_metadata=False)!r} "
                           f"but the manifest describes {schema.to_string(show_schema_metadata=False)!r}")
    blocks, rows = [], 0
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        if any(c.null_count for c in batch.columns):
            raise FeatureError(f"feature shard {name!r} holds null values (record batch {i})")
        block = {"shard": name, "index": _view(batch.column("index"), np.int64), "label": _view(batch.column("label"), np.int64)}
        for s in stages:  # zero-copy views into the memory map
            block[s["stage"]] = _view(batch.column(s["column"]).flatten(), np.float16).reshape(len(batch), *s["shape"])
        rows += len(batch)
        blocks.append(block)
    if rows != shard["rows"]:
        raise FeatureError(f"feature shard {name!r} holds {rows} rows but the manifest says {shard['rows']}")
    return blocks
