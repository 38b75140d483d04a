"""Teacher features precomputed once into Arrow shards (local disk or S3), read by every trial.

    precompute(teacher_path, bundle, out)   writer: clean images -> shards -> manifest (last)
    FeatureStore.open(uri)                  reader: manifest -> verified, memory-mapped shards
    ShardTeacher(store)                     LG targets: gather by index, replay crop + flip
    for_run(cfg, bundle)                    open + check against the run (setup() uses this)
"""

from raylg.features.errors import FeatureError
from raylg.features.manifest import MANIFEST, VERSION, manifest_uri, read as read_manifest
from raylg.features.replay import replay
from raylg.features.store import FeatureStore
from raylg.features.targets import ShardTeacher, for_run
from raylg.features.writer import precompute

__all__ = ["FeatureError", "FeatureStore", "MANIFEST", "ShardTeacher", "VERSION", "for_run", "manifest_uri", "precompute",
           "read_manifest", "replay"]
