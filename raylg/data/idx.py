"""Fashion-MNIST from the official gzipped IDX files (Debian: dataset-fashion-mnist)."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from .errors import DataError
from .registry import register
from .source import ArraySplit, Source, check_labels

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_URL = "https://github.com/zalandoresearch/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a read-only uint8 array; DataError names a bad file."""
    p = Path(path)
    st = p.stat()
    return _read_idx(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx(path: str, _size: int, _mtime: int) -> np.ndarray:
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path!r}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path!r} is not an unsigned-byte IDX file (magic {raw[:4].hex() or 'missing'}, expected 0000080N)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if ndim < 1 or len(raw) < head:
        raise DataError(f"{path!r}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    want = int(np.prod(shape))
    if len(raw) - head != want:
        raise DataError(f"{path!r}: header says shape {shape} ({want} bytes) but the file holds {len(raw) - head} bytes")
    arr = np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)
    arr.setflags(write=False)
    return arr


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST not found: looked for {stem}.gz (or {stem}) in {str(root)!r}. Install Debian's package "
        f"(apt-get install dataset-fashion-mnist, files land in {FASHION_ROOT}) or download the four "
        f"*-ubyte.gz files from {FASHION_URL} into a folder and set data.root to it")


@register("fashion_mnist")
def load_fashion_mnist(cfg) -> Source:
    root = Path(cfg.root or FASHION_ROOT).expanduser()
    splits = {}
    for split, (img_stem, lab_stem) in _FILES.items():
        img_path, lab_path = _find(root, img_stem), _find(root, lab_stem)
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3:
            raise DataError(f"{str(img_path)!r}: expected N x 28 x 28 images, got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{str(lab_path)!r}: {labels.shape} labels for {len(images)} images in {str(img_path)!r}")
        splits[split] = ArraySplit(images, check_labels(labels, 10, str(lab_path)))
    return Source(name="fashion_mnist", root=str(root), splits=splits, class_names=list(FASHION_CLASSES),
                  mean=(0.2860,), std=(0.3530,))
