"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes): no download, no official val/test."""

from __future__ import annotations

import numpy as np

from .registry import register
from .source import ArraySplit, Source, check_labels


@register("digits")
def load_digits(cfg) -> Source:
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    labels = check_labels(d.target, 10, "sklearn digits target")
    return Source(
        name="digits",
        root="",
        splits={"train": ArraySplit(images, labels)},
        class_names=[str(i) for i in range(10)],
        mean=(0.3053,),
        std=(0.3759,),
    )
