"""Oxford Flowers-102 in its official layout: jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat.

Images are read lazily from disk. The official split ids (trnid / valid / tstid, 1-based
image numbers) give train / val / test; an item's index is its position in that list.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .archive import cache_root
from .errors import DataError
from .registry import register
from .source import FileSplit, Source, check_labels

FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
NUM_CLASSES = 102
_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise DataError(f"Flowers-102 not found: looked for {str(path)!r}. Download 102flowers.tgz, imagelabels.mat "
                        f"and setid.mat from {FLOWERS_URL}, extract the tgz beside the .mat files (giving jpg/) "
                        f"and set data.root to that folder")
    try:
        return loadmat(str(path))
    except Exception as e:
        raise DataError(f"cannot read {str(path)!r} as a MATLAB file: {type(e).__name__}: {e}") from None


def _vector(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise DataError(f"{str(path)!r}: missing field {key!r} (has {sorted(k for k in mat if not k.startswith('__'))})")
    return np.asarray(mat[key]).reshape(-1)


@register("flowers102")
def load_flowers102(cfg) -> Source:
    root = cache_root(cfg.root) / "flowers-102" if not cfg.root else Path(cfg.root).expanduser()
    labels_path, setid_path = root / "imagelabels.mat", root / "setid.mat"
    labels = check_labels(_vector(_loadmat(labels_path), "labels", labels_path) - 1, NUM_CLASSES,
                          f"{labels_path} field 'labels'", offset=1)
    setid = _loadmat(setid_path)
    if not (root / "jpg").is_dir():
        raise DataError(f"Flowers-102 images not found: looked for {str(root / 'jpg')!r}; extract 102flowers.tgz "
                        f"from {FLOWERS_URL} into {str(root)!r}")
    splits = {}
    for split, key in _SPLITS.items():
        ids = _vector(setid, key, setid_path).astype(np.int64)
        bad = np.flatnonzero((ids < 1) | (ids > len(labels)))
        if bad.size:
            raise DataError(f"{setid_path} field {key!r}: image id {int(ids[bad[0]])} is out of range "
                            f"[1, {len(labels)}] (imagelabels.mat has {len(labels)} labels)")
        paths = [str(root / "jpg" / f"image_{i:05d}.jpg") for i in ids]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise DataError(f"Flowers-102 image {missing[0]!r} (listed in {setid_path.name} {key!r}) does not "
                            f"exist ({len(missing)} missing in all); extract 102flowers.tgz from {FLOWERS_URL} again")
        splits[split] = FileSplit(paths, labels[ids - 1], mode="RGB")
    return Source(name="flowers102", root=str(root), splits=splits,
                  class_names=[str(i) for i in range(1, NUM_CLASSES + 1)],
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
