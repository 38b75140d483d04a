"""What a loader returns: the dataset's official splits, untransformed, indexed by source index.

A split holds labels (int64, one per source index) and returns the PIL image of a source
index, in the dataset's mode ('L' for grayscale sets, 'RGB' otherwise). Small sets keep
uint8 arrays in memory; big ones keep file paths and open each image when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError


class ArraySplit:
    """Images in memory: uint8 N x H x W (grayscale) or N x H x W x 3 (RGB)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
            raise ValueError(f"images must be uint8 NxHxW or NxHxWx3, got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mode = "L" if images.ndim == 3 else "RGB"

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


class FileSplit:
    """Images on disk, opened lazily and converted to ``mode``."""

    def __init__(self, paths: list[str], labels: np.ndarray, mode: str):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return open_image(self.paths[i], self.mode)


def open_image(path: str | Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except FileNotFoundError:
        raise DataError(f"image file {str(path)!r} does not exist") from None
    except Exception as e:  # PIL raises several types for broken files
        raise DataError(f"cannot read image file {str(path)!r}: {type(e).__name__}: {e}") from None


@dataclass
class Source:
    """A dataset's official splits before any subset or transform."""

    name: str
    root: str  # where it was read from ("" for bundled data)
    splits: dict  # "train" always; "val" and "test" when the set has them
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return 1 if self.splits["train"].mode == "L" else 3


def check_labels(labels, num_classes: int, where: str, offset: int = 0) -> np.ndarray:
    """labels as int64 in [0, num_classes); else DataError naming ``where``, the position and value.

    ``offset`` is added back in the message when the file stores labels from 1 (Flowers).
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"{where}: expected a 1-D list of labels, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{where}: labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{where}: label {int(arr[i]) + offset} at position {i} is out of range "
                        f"[{offset}, {num_classes - 1 + offset}] ({bad.size} bad label(s) in all)")
    return arr
