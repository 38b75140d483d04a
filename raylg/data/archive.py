"""Fetch and unpack an official dataset archive: download, md5 check, safe extract."""

from __future__ import annotations

import tarfile
import urllib.request
from pathlib import Path

from raylg.files import atomic_path, file_digest

from .errors import DataError

DEFAULT_CACHE = "~/.cache/raylg"


def cache_root(root: str) -> Path:
    """data.root, or the download cache when it is empty."""
    return Path(root or DEFAULT_CACHE).expanduser()


def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


def check_md5(path: Path, expected: str, url: str) -> None:
    got = md5sum(path)
    if got != expected:
        raise DataError(f"checksum mismatch for {str(path)!r}: expected md5 {expected}, got {got}; "
                        f"the file is corrupt or incomplete: delete it and download {url} again")


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download url to dest through a temporary name; DataError (with the url and dest) on failure."""
    try:
        with atomic_path(dest, ".part") as tmp, urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 20):
                f.write(block)
    except OSError as e:
        raise DataError(f"could not download {url} to {str(dest)!r}: {e}") from None


def extract_tar(path: Path, into: Path) -> None:
    """Extract a tar.gz with the 'data' filter (no absolute paths, links out or devices)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot extract {str(path)!r}: {type(e).__name__}: {e}; the archive is corrupt, "
                        "delete it and fetch it again") from None
