"""build(cfg.data) -> DataBundle: the splits of a run, their transforms and fingerprints."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .dataset import ImageDataset
from .errors import DataError
from .registry import get_loader
from .source import Source
from .subset import carve_test, carve_val, class_counts, per_class_subset, require_every_class
from .transforms import eval_transform, train_transform

SPLITS = ("train", "val", "test")


@dataclass
class DataBundle:
    cfg: object  # DataConfig
    source: Source
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None
    val_carved: bool
    test_carved: bool = False

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def in_chans(self) -> int:
        return self.source.in_chans

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.source.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.source.std)

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    def split(self, split: str) -> ImageDataset:
        ds = getattr(self, split, None) if split in SPLITS else None
        if ds is None:
            have = [s for s in SPLITS if getattr(self, s) is not None]
            raise DataError(f"{self.name} has no {split!r} split here (splits: {', '.join(have)})")
        return ds

    def eval_transform(self, img_size: int | None = None):
        """Resize (shorter side, then center crop to square) + ToTensor + normalise."""
        return eval_transform(img_size or self.cfg.img_size, self.mean, self.std, self.cfg.interpolation)

    def view(self, split: str, transform=None) -> ImageDataset:
        """The same images and indices as ``split`` with another transform (default: eval at img_size)."""
        return self.split(split).with_transform(transform if transform is not None else self.eval_transform())

    def fingerprint(self, split: str) -> dict:
        """Identity of a split's contents. ``sha256`` covers (dataset name, source split, source
        indices, labels); the other fields say how it was chosen."""
        ds = self.split(split)
        h = hashlib.sha256(f"{self.name}|{ds.source_split}|".encode())
        h.update(ds.indices.astype("<i8").tobytes())
        h.update(ds.labels.astype("<i8").tobytes())
        return {
            "name": self.name,
            "split": split,
            "source_split": ds.source_split,
            "per_class": self.cfg.per_class if split == "train" else 0,
            "seed": self.cfg.split_seed,
            "count": len(ds),
            "sha256": h.hexdigest(),
        }

    def describe(self) -> dict:
        """What build() did, as plain data to save beside the run's config."""
        splits = {}
        for s in SPLITS:
            ds = getattr(self, s)
            if ds is not None:
                fp = self.fingerprint(s)
                splits[s] = {"count": fp["count"], "source_split": fp["source_split"],
                             "source_count": len(ds.split), "sha256": fp["sha256"],
                             "class_counts": class_counts(ds.labels, self.num_classes).tolist()}
        return {
            "name": self.name,
            "root": self.source.root,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "img_size": self.cfg.img_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "per_class": self.cfg.per_class,
            "split_seed": self.cfg.split_seed,
            "val_carved": self.val_carved,
            "val_fraction": self.cfg.val_fraction if self.val_carved else None,
            "test_carved": self.test_carved,
            "test_fraction": self.cfg.test_fraction if self.test_carved else None,
            "sizes": {s: (splits[s]["count"] if s in splits else None) for s in SPLITS},
            "splits": splits,
        }


def build(cfg) -> DataBundle:
    """Load ``cfg.name``; carve test (when asked) and val if the set has none; take the per_class
    subset; attach transforms."""
    src = get_loader(cfg.name)(cfg)
    train_split = src.splits["train"]
    require_every_class(train_split.labels, src.class_names, f"{src.name} train split ({src.root or 'bundled'})")
    train_pos, carvings = np.arange(len(train_split)), []
    test = src.splits.get("test")
    test_carved = test is None and cfg.test_fraction > 0
    if test_carved:
        train_pos, test_pos = carve_test(train_split.labels, cfg.test_fraction)
        test = ImageDataset(train_split, test_pos, None, "train")
        carvings.append(f"test (data.test_fraction={cfg.test_fraction})")
    elif test is not None:
        test = ImageDataset(test, np.arange(len(test)), None, "test")
    carved = "val" not in src.splits
    if carved:  # positions relative to what test left, mapped back
        rest, val_rel = carve_val(train_split.labels[train_pos], cfg.val_fraction, cfg.split_seed)
        train_pos, val_pos = train_pos[rest], train_pos[val_rel]
        val = ImageDataset(train_split, val_pos, None, "train")
        carvings.append(f"val (data.val_fraction={cfg.val_fraction})")
    else:
        val = ImageDataset(src.splits["val"], np.arange(len(src.splits["val"])), None, "val")
    pool = f"train after carving {' and '.join(carvings)}" if carvings else "train"
    train_pos = per_class_subset(train_split.labels, train_pos, cfg.per_class, cfg.split_seed, src.class_names, pool)
    train = ImageDataset(train_split, train_pos, train_transform(cfg, src.mean, src.std, src.in_chans), "train")
    bundle = DataBundle(cfg=cfg, source=src, train=train, val=val, test=test, val_carved=carved, test_carved=test_carved)
    ev = bundle.eval_transform()
    bundle.val.transform = ev
    if bundle.test is not None:
        bundle.test.transform = ev
    return bundle
