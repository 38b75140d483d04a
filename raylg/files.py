"""Local files written once: a file's digest, and writes that land whole or not at all.

    digest = file_digest(path)                     # sha256 hex (md5 for archives that publish md5)
    write_text_atomic(path, text)                  # temporary name beside it, then a rename
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp)                           # anything that writes to a path

A reader sees the old file or the new one, never a partial one (the rename is atomic within
one filesystem); a write that fails leaves no temporary file behind.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 8 << 20) -> str:
    """Hex digest of a file's bytes, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


@contextmanager
def atomic_path(dest: str | Path, suffix: str = ".tmp", prefix: str = "") -> Iterator[Path]:
    """A temporary path beside dest (prefix + dest's name + suffix); renamed onto dest when the block
    ends without error, removed when it raises. The parent directory is created if needed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(prefix + dest.name + suffix)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)


def write_text_atomic(dest: str | Path, text: str, suffix: str = ".tmp", prefix: str = "") -> None:
    with atomic_path(dest, suffix, prefix) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(dest: str | Path, data: bytes, suffix: str = ".tmp", prefix: str = "") -> None:
    with atomic_path(dest, suffix, prefix) as tmp:
        tmp.write_bytes(data)
