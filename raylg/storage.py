"""Local paths and s3://bucket/prefix URIs, handled the same way.

Reading goes through pyarrow's filesystem layer; writing a file is "publish a finished local
file": a plain rename on local disk, a single PUT with its SHA-256 checksum on S3 (S3 rejects
an upload whose bytes do not match, and a PUT is atomic: an interrupted upload leaves no
object). Bucket checks, listing and deletes use boto3.

Endpoint, region and credentials come from the standard places, so an S3-compatible store
(MinIO, Ceph, moto) works: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_REGION or
AWS_DEFAULT_REGION, and the default credential chain (environment, shared files, instance
or pod role).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

from raylg.files import write_bytes_atomic

MAX_SINGLE_PUT = 5 * 2**30  # S3's limit for one PUT


class StorageError(OSError):
    """A location cannot be read or written; the message names the URI."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str, name: str) -> str:
    return f"{str(uri).rstrip('/')}/{name}" if is_s3(uri) else str(Path(uri) / name)


def parent(uri: str) -> str:
    if is_s3(uri):
        return str(uri).rstrip("/").rsplit("/", 1)[0]
    return str(Path(uri).parent)


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/a/b -> ("bucket", "a/b")."""
    p = urlparse(uri)
    if p.scheme != "s3" or not p.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    return p.netloc, p.path.lstrip("/")


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def s3_filesystem() -> pafs.S3FileSystem:
    kwargs = {}
    ep = endpoint()
    if ep:
        p = urlparse(ep if "://" in ep else f"https://{ep}")
        kwargs.update(endpoint_override=p.netloc, scheme=p.scheme)
    if region():
        kwargs["region"] = region()
    return pafs.S3FileSystem(**kwargs)


def s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=endpoint(), region_name=region())


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path in it) for a local path or s3:// URI."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return s3_filesystem(), f"{bucket}/{key}"
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def _s3_error(e: Exception, uri: str, doing: str) -> StorageError:
    code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
    return StorageError(f"cannot {doing} {uri!r}: {code}: {e}")


def check_bucket(uri: str) -> None:
    """StorageError unless the URI's bucket exists and these credentials may use it."""
    if not is_s3(uri):
        return
    bucket, _ = split_s3(uri)
    try:
        s3_client().head_bucket(Bucket=bucket)
    except Exception as e:
        raise _s3_error(e, f"s3://{bucket}", "use bucket (does it exist, and do the credentials reach it?)") from None


def size(uri: str) -> int | None:
    """The object's size in bytes, or None when it does not exist."""
    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise StorageError(f"cannot stat {uri!r}: {e}") from None
    return info.size if info.type == pafs.FileType.File else None


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        if "not found" in str(e).lower() or "nosuchkey" in str(e).lower():
            raise FileNotFoundError(uri) from None
        raise StorageError(f"cannot read {uri!r}: {e}") from None


def stream_chunks(uri: str, chunk: int = 8 << 20) -> Iterator[bytes]:
    """The object's bytes in chunks, through pyarrow's filesystem."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        while True:
            b = f.read(chunk)
            if not b:
                return
            yield b


def publish_file(local: str | Path, uri: str, sha256_hex: str) -> None:
    """Move a finished local file to ``uri``: rename on disk, checksummed PUT on S3 (then the
    local file is removed). Either way the destination never holds a partial file."""
    local = Path(local)
    if not is_s3(uri):
        dest = Path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, dest)
        return
    n = local.stat().st_size
    if n > MAX_SINGLE_PUT:
        raise StorageError(f"{local} is {n} bytes, over S3's single-PUT limit; use a smaller shard size")
    bucket, key = split_s3(uri)
    checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    try:
        with open(local, "rb") as f:
            s3_client().put_object(Bucket=bucket, Key=key, Body=f, ContentLength=n, ChecksumSHA256=checksum)
    except Exception as e:
        raise _s3_error(e, uri, "upload to") from None
    got = size(uri)
    if got != n:
        raise StorageError(f"uploaded {uri!r} but it holds {got} bytes, not {n}")
    local.unlink()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a small object atomically (temporary name + rename locally; one PUT on S3)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as e:
            raise _s3_error(e, uri, "write") from None
        return
    write_bytes_atomic(uri, data, suffix=f".tmp-{os.getpid()}", prefix=".")  # a hidden name beside it, then renamed


def list_names(uri: str) -> list[str]:
    """Names of the files directly under a directory / prefix ([] when there is none)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        names = []
        try:
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                names += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
        except Exception as e:
            raise _s3_error(e, uri, "list") from None
        return names
    d = Path(uri)
    return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def delete(uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().delete_object(Bucket=bucket, Key=key)
        except Exception as e:
            raise _s3_error(e, uri, "delete") from None
        return
    p = Path(uri)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
