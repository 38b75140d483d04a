"""A torch Dataset over chosen source indices of one split, with a transform."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class ImageDataset(Dataset):
    """Items are {"image": C x H x W float tensor, "label": int, "index": source index}.

    ``index`` is the image's position in its source split (``source_split``), whatever
    subset ``indices`` selects: the key for precomputed teacher features. A transform with
    ``with_geometry`` (the train transform) adds "crop" (float [y0, x0, y1, x1], fractions of
    the source image) and "flip" (bool), which precomputed features replay.
    """

    def __init__(self, split, indices: np.ndarray, transform, source_split: str):
        self.split = split
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.source_split = source_split

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels[self.indices]

    def __getitem__(self, k: int) -> dict:
        i = int(self.indices[k])
        img = self.split.image(i)
        item = {"label": int(self.split.labels[i]), "index": i}
        if hasattr(self.transform, "with_geometry"):
            img, geometry = self.transform.with_geometry(img)
            return {"image": img, **item, **geometry}
        return {"image": self.transform(img) if self.transform else img, **item}

    def with_transform(self, transform) -> "ImageDataset":
        return ImageDataset(self.split, self.indices, transform, self.source_split)
