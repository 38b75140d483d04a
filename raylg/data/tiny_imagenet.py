"""Tiny-ImageNet (the CS231n release, tiny-imagenet-200.zip) in its official layout:

    tiny-imagenet-200/wnids.txt                           200 WordNet ids, one a line
    tiny-imagenet-200/train/<wnid>/images/*.JPEG          500 a class
    tiny-imagenet-200/val/images/*.JPEG                   10,000, labelled by
    tiny-imagenet-200/val/val_annotations.txt             <file> <wnid> <x0> <y0> <x1> <y1>, tab-separated

``data.root`` may be the tiny-imagenet-200 folder itself or the folder holding it (the
default: the cache, ~/.cache/raylg). Labels are the wnids' positions in sorted order, as the
reference (lkhl/tiny-transformers) and torchvision's ImageFolder number them; class names are
the wnids. The official val split, the one with labels, is raylg's *test* split, the split
the reference reports; raylg's val is carved from train, as for CIFAR. The unlabelled
official test/ folder is not read. Images are 64x64 JPEGs, some grayscale, all read as RGB;
mean/std are ImageNet's, as the reference uses. An item's index is its position in the sorted
(wnid, file) list for train and its line's position in val_annotations.txt for test.
"""

from __future__ import annotations

import re
from pathlib import Path

from .archive import cache_root
from .errors import DataError
from .registry import register
from .source import FileSplit, Source

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
LAYOUT = (f"{FOLDER}/wnids.txt, {FOLDER}/train/<wnid>/images/*.JPEG, {FOLDER}/val/images/*.JPEG and "
          f"{FOLDER}/val/val_annotations.txt")
_WNID = re.compile(r"^n\d{8}$")


def find_root(root: str) -> Path:
    """The tiny-imagenet-200 folder: data.root itself, or data.root/tiny-imagenet-200."""
    base = cache_root(root)
    for cand in (base, base / FOLDER):
        if (cand / "wnids.txt").is_file():
            return cand
    raise DataError(f"Tiny-ImageNet not found: looked for {str(base / 'wnids.txt')!r} and "
                    f"{str(base / FOLDER / 'wnids.txt')!r}. Expected the official layout: {LAYOUT}. "
                    f"Download {TINY_URL}, unzip it and set data.root to the folder holding {FOLDER}/ (or to it)")


def _wnids(path: Path) -> list[str]:
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        wnid = line.strip()
        if not wnid:
            continue
        if not _WNID.match(wnid):
            raise DataError(f"{str(path)!r} line {n}: {wnid!r} is not a WordNet id (n followed by 8 digits)")
        if wnid in ids:
            raise DataError(f"{str(path)!r} line {n}: {wnid} is listed twice")
        ids.append(wnid)
    if not ids:
        raise DataError(f"{str(path)!r} lists no WordNet ids")
    return sorted(ids)


def _train(root: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"Tiny-ImageNet: {str(train)!r} is not a folder; expected the official layout: {LAYOUT}")
    known = set(wnids)
    extra = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name not in known)
    if extra:
        raise DataError(f"Tiny-ImageNet: {str(train)!r} has class folder(s) not in wnids.txt: {', '.join(extra[:5])}")
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        folder = train / wnid / "images"
        files = sorted(p for p in folder.glob("*.JPEG") if p.is_file()) if folder.is_dir() else []
        if not files:
            raise DataError(f"Tiny-ImageNet: class {wnid} (wnids.txt) has no images: looked for "
                            f"{str(folder / '*.JPEG')!r}")
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    return paths, labels


def _val(root: Path, index: dict[str, int]) -> tuple[list[str], list[int]]:
    ann, images = root / "val" / "val_annotations.txt", root / "val" / "images"
    if not ann.is_file():
        raise DataError(f"Tiny-ImageNet: looked for {str(ann)!r} and it is not a file; expected the official "
                        f"layout: {LAYOUT}")
    paths, labels, seen = [], [], {}
    for n, line in enumerate(ann.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{str(ann)!r} line {n}"
        if len(fields) < 2:
            raise DataError(f"{where}: expected '<file> <wnid> <x0> <y0> <x1> <y1>', got {line!r}")
        name, wnid = fields[0], fields[1]
        if wnid not in index:
            raise DataError(f"{where}: {wnid!r} (for {name}) is not one of the {len(index)} classes of wnids.txt")
        if name in seen:
            raise DataError(f"{where}: {name} is annotated twice (first on line {seen[name]})")
        image = images / name
        if Path(name).name != name or not image.is_file():
            raise DataError(f"{where} names {name}, but {str(image)!r} does not exist")
        seen[name] = n
        paths.append(str(image))
        labels.append(index[wnid])
    if not paths:
        raise DataError(f"{str(ann)!r} holds no annotations")
    return paths, labels


@register("tiny_imagenet")
def load_tiny_imagenet(cfg) -> Source:
    root = find_root(cfg.root)
    wnids = _wnids(root / "wnids.txt")
    train = FileSplit(*_train(root, wnids), mode="RGB")
    test = FileSplit(*_val(root, {w: i for i, w in enumerate(wnids)}), mode="RGB")
    return Source(name="tiny_imagenet", root=str(root), splits={"train": train, "test": test}, class_names=wnids,
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                  notes={"test_split": "the official val/ (val_annotations.txt)"})
