"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes): no download, no official val/test."""

from __future__ import annotations

import numpy as np

from .registry import register
from .source import ArraySplit, Source, check_labels


def digits_csv():
    """The digits CSV scikit-learn ships (a Path), found without importing sklearn; None if it is not there."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    return path if path is not None and path.is_file() else None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images 1797 x 8 x 8 in 0..16, labels) from the CSV scikit-learn ships, read as its
    load_digits reads it, without importing sklearn.datasets (~0.8 s, paid by every fresh trial
    process); scikit-learn's own loader where the file is not where it keeps it."""
    path = digits_csv()
    if path is None:
        from sklearn.datasets import load_digits as sk_load

        d = sk_load()
        return d.images, d.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


@register("digits")
def load_digits(cfg) -> Source:
    images, target = digits_arrays()
    images = np.round(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    labels = check_labels(target, 10, "sklearn digits target")
    return Source(
        name="digits",
        root="",
        splits={"train": ArraySplit(images, labels)},
        class_names=[str(i) for i in range(10)],
        mean=(0.3053,),
        std=(0.3759,),
    )
