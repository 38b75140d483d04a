"""The manifest of a set of teacher-feature shards: what a reader may trust.

A feature set is a directory or s3:// prefix holding shards (``part-NNNNN-WRITEID.arrow``,
uncompressed Arrow IPC files, one record batch each) and ``manifest.json``, written last.
Only shards the manifest lists exist for a reader; each is checked against the manifest's
byte count and sha256 before use. Format version 1:

    format, version           "raylg.teacher-features", 1
    write_id, created_utc     which precompute run wrote it, and when
    file_format               "arrow-ipc"
    rows, bytes               totals over the shards
    shards                    [{name, rows, bytes, sha256, index_min, index_max}]
    columns                   index (int64), label (int64), one fixed-size list<float16> per stage
    stages                    [{stage, column, shape [C, h, w], dtype "float16"}]
    teacher                   sha256, arch, in_chans, num_classes, img_size, stage_channels,
                              val_top1, fingerprint (its training data), bn_mode ("eval")
    input                     img_size, resize rule, interpolation, mean, std
    dataset                   fingerprint of the images covered (name, split, source_split,
                              per_class, seed, count, sha256 of indices + labels)
    augmentation              the replay rule (which augmentations reach the maps)
"""

from __future__ import annotations

import json
import math

import pyarrow as pa

from raylg import storage
from raylg.features.errors import FeatureError

FORMAT, VERSION = "raylg.teacher-features", 1
MANIFEST = "manifest.json"
FILE_FORMAT = "arrow-ipc"
SHARD_PREFIX, SHARD_SUFFIX = "part-", ".arrow"
AUGMENTATION = {
    "replayed": ["random-resized-crop box", "horizontal flip"],
    "image_only": ["colour jitter", "RandAugment (its rotate/shear/translate ops included)", "random erasing"],
    "rule": ("Maps are the teacher's outputs on the clean image (the whole source image resized to the "
             "teacher's input size, no augmentation, BatchNorm in eval mode). At training time each item's "
             "crop box and horizontal flip are replayed on every stage map (the box mapped to the map's "
             "coordinates, bilinear resampling to the map's own size); colour, RandAugment and random "
             "erasing touch the student's image only. This is the reference code's offline rule."),
}
REQUIRED = ("format", "version", "write_id", "file_format", "rows", "bytes", "shards", "columns", "stages",
            "teacher", "input", "dataset", "augmentation")


def stage_column(stage: int) -> str:
    return f"stage{stage}"


def arrow_schema(stages: list[dict]) -> pa.Schema:
    fields = [pa.field("index", pa.int64(), nullable=False), pa.field("label", pa.int64(), nullable=False)]
    for s in stages:
        fields.append(pa.field(s["column"], pa.list_(pa.float16(), math.prod(s["shape"])), nullable=False))
    return pa.schema(fields)


def manifest_uri(uri: str) -> str:
    """A feature set's manifest: ``uri`` itself when it names a .json file, else DIR/manifest.json."""
    return uri if str(uri).endswith(".json") else storage.join(uri, MANIFEST)


def read(uri: str) -> dict:
    """The manifest at (or under) uri, checked for format, version and internal consistency."""
    where = manifest_uri(uri)
    try:
        raw = storage.read_bytes(where)
    except FileNotFoundError:
        raise FeatureError(f"no feature manifest at {where!r}: nothing complete was published there "
                           "(jobs/precompute_features.py writes the manifest last, after every shard)") from None
    except OSError as e:
        raise FeatureError(f"cannot read feature manifest {where!r}: {e}") from None
    try:
        m = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FeatureError(f"feature manifest {where!r} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise FeatureError(f"{where!r} is not a raylg feature manifest (format {found!r}, expected {FORMAT!r})")
    if m.get("version") != VERSION:
        raise FeatureError(f"feature manifest {where!r} has format version {m.get('version')!r}; this raylg reads "
                           f"version {VERSION}: re-run jobs/precompute_features.py")
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise FeatureError(f"feature manifest {where!r} lacks {', '.join(missing)}")
    if m["file_format"] != FILE_FORMAT:
        raise FeatureError(f"feature manifest {where!r}: file_format {m['file_format']!r}, expected {FILE_FORMAT!r}")
    if sum(s["rows"] for s in m["shards"]) != m["rows"]:
        raise FeatureError(f"feature manifest {where!r}: shard rows add up to {sum(s['rows'] for s in m['shards'])}, "
                           f"not the {m['rows']} it states")
    m["uri"] = where
    m["base"] = storage.parent(where)
    return m


def dumps(m: dict) -> bytes:
    return json.dumps({k: v for k, v in m.items() if k not in ("uri", "base")}, indent=2).encode()
