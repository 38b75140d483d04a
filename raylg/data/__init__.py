"""Datasets for raylg: real loaders, tiny-data subsets, transforms.

    from raylg.data import build, DATASETS
    bundle = build(cfg.data)              # cfg.data: raylg.config.DataConfig
    bundle.train / .val / .test           # items: {"image": CxHxW float, "label": int, "index": int}

Loaders register themselves in DATASETS (name -> loader(cfg) -> Source); importing this
package imports them all.
"""

from . import chaoyang, cifar, digits, flowers, idx, imagefolder, tiny_imagenet  # noqa: F401  (register the loaders)
from .bundle import DataBundle, build
from .dataset import ImageDataset
from .errors import DataError
from .registry import DATASETS, register
from .source import ArraySplit, FileSplit, Source

__all__ = ["DATASETS", "ArraySplit", "DataBundle", "DataError", "FileSplit", "ImageDataset", "Source", "build", "register"]
