"""Verified local copies of shards, one per node, shared by every process on it.

A shard on local disk is used in place. A shard on S3 is copied once into the node's cache
directory (``RAYLG_FEATURE_CACHE``, default TMPDIR/raylg-features) as ``SHA256.arrow``: the
copy streams through pyarrow's S3 filesystem into a temporary file while hashing, and is
renamed into place only when its size and sha256 match the manifest. An exclusive file lock
per shard makes concurrent trials on the node wait for one copy instead of each making
its own. Processes then memory-map the same file, so the node's page cache holds the bytes
once however many trials and workers read them.

Whatever the source, `verify` hashes the local file before it is opened (a cached file is
named by its hash, but a disk can still flip a byte; the cost is one sequential read). A
cached copy that fails is deleted and fetched again; the source failing is an error.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from raylg import storage
from raylg.features.errors import FeatureError
from raylg.files import atomic_path, sha256_file


def cache_root() -> Path:
    root = os.environ.get("RAYLG_FEATURE_CACHE") or str(Path(tempfile.gettempdir()) / "raylg-features")
    p = Path(root).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mismatch(shard: dict, where: str, what: str, got, want) -> FeatureError:
    return FeatureError(f"feature shard {shard['name']!r} ({where}) has {what} {got} but the manifest says {want}: "
                        "the file is corrupt, truncated or was replaced; re-run jobs/precompute_features.py")


def verify(path: Path, shard: dict, where: str) -> None:
    """FeatureError naming the shard unless the local file has the manifest's size and sha256."""
    n = path.stat().st_size
    if n != shard["bytes"]:
        raise _mismatch(shard, where, "size", f"{n} bytes", f"{shard['bytes']} bytes")
    digest = sha256_file(path)
    if digest != shard["sha256"]:
        raise _mismatch(shard, where, "sha256", digest[:16] + "…", shard["sha256"][:16] + "…")


def _missing(shard: dict, where: str, manifest_uri: str) -> FeatureError:
    return FeatureError(f"feature shard {shard['name']!r} is listed in {manifest_uri!r} but missing at {where!r}")


def local_shard(base: str, shard: dict, manifest_uri: str) -> Path:
    """A local, verified file holding the shard's bytes (in place, or in the node cache)."""
    where = storage.join(base, shard["name"])
    if not storage.is_s3(base):
        path = Path(where)
        if not path.is_file():
            raise _missing(shard, where, manifest_uri)
        verify(path, shard, where)
        return path
    root = cache_root()
    dest = root / f"{shard['sha256']}.arrow"
    with _locked(root / f"{shard['sha256']}.lock"):
        if dest.is_file():
            try:
                verify(dest, shard, f"{where}, cached as {dest}")
                return dest
            except FeatureError:  # a damaged cache copy is dropped and fetched again
                dest.unlink(missing_ok=True)
        with atomic_path(dest, suffix=f".{os.getpid()}.part", prefix=".") as tmp:  # removed if anything below raises
            h, n = hashlib.sha256(), 0
            try:
                with open(tmp, "wb") as out:
                    for b in storage.stream_chunks(where):
                        h.update(b)
                        n += len(b)
                        out.write(b)
            except FileNotFoundError:
                raise _missing(shard, where, manifest_uri) from None
            except OSError as e:
                if "not found" in str(e).lower() or "nosuchkey" in str(e).lower():
                    raise _missing(shard, where, manifest_uri) from None
                raise FeatureError(f"cannot read feature shard {shard['name']!r} at {where!r}: {e}") from None
            if n != shard["bytes"]:
                raise _mismatch(shard, where, "size", f"{n} bytes", f"{shard['bytes']} bytes")
            if h.hexdigest() != shard["sha256"]:
                raise _mismatch(shard, where, "sha256", h.hexdigest()[:16] + "…", shard["sha256"][:16] + "…")
        return dest
