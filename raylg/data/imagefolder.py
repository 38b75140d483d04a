"""A folder tree: root/train/<class>/*.png|jpg..., optional root/val/<class>/ and root/test/<class>/.

Classes are the sub-folders of train, sorted; val/test may hold a subset of them. Without
val/, val is carved from train. Images are read lazily; the colour mode follows the first
training image (grayscale -> 'L', 1 channel; anything else -> 'RGB'), and every image is
converted to it. An item's index is its position in the split's sorted (class, file) list.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .errors import DataError
from .registry import register
from .source import FileSplit, Source

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _classes(train: Path) -> list[str]:
    names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"imagefolder: {str(train)!r} has no class sub-folders; expected train/<class>/<image files>")
    for name in names:
        if not _images(train / name):
            raise DataError(f"imagefolder: class {name!r} has no images in {str(train / name)!r} "
                            f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return names


def _scan(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    index = {c: i for i, c in enumerate(classes)}
    for sub in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in index:
            raise DataError(f"imagefolder: {str(sub)!r} is a class not present in train/ "
                            f"(train classes: {', '.join(classes)})")
        files = _images(sub)
        paths += [str(f) for f in files]
        labels += [index[sub.name]] * len(files)
    if not paths:
        raise DataError(f"imagefolder: {str(split_dir)!r} holds no images in class sub-folders")
    return paths, labels


def _mode(path: str) -> str:
    try:
        with Image.open(path) as im:
            return "L" if im.mode in _GRAY_MODES else "RGB"
    except Exception as e:  # PIL raises several types for broken files
        raise DataError(f"cannot read image file {path!r}: {type(e).__name__}: {e}") from None


@register("imagefolder")
def load_imagefolder(cfg) -> Source:
    if not cfg.root:
        raise DataError("imagefolder: set data.root to a folder holding train/<class>/ (and optionally val/, test/)")
    root = Path(cfg.root).expanduser()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"imagefolder: looked for {str(train_dir)!r} and it is not a folder; expected "
                        f"root/train/<class>/<image files> under data.root={cfg.root!r}")
    classes = _classes(train_dir)
    paths, labels = _scan(train_dir, classes)
    mode = _mode(paths[0])
    splits = {"train": FileSplit(paths, labels, mode)}
    for split in ("val", "test"):
        if (root / split).is_dir():
            splits[split] = FileSplit(*_scan(root / split, classes), mode)
    gray = mode == "L"
    return Source(name="imagefolder", root=str(root), splits=splits, class_names=classes,
                  mean=(0.449,) if gray else (0.485, 0.456, 0.406), std=(0.226,) if gray else (0.229, 0.224, 0.225))
