"""CIFAR-10 / CIFAR-100 from the official python archives (cifar-10-batches-py/, cifar-100-python/).

When the folder is missing, the official tar.gz is taken from the same root (or downloaded
there when data.download is true), its published md5 checked, then extracted. Batches are
unpickled with numpy arrays as the only allowed globals. No official val split: val is
carved from train by raylg.data.subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .archive import cache_root, check_md5, download, extract_tar
from .errors import DataError
from .registry import register
from .safe_pickle import load_pickle
from .source import ArraySplit, Source, check_labels

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class CifarSpec:
    name: str
    title: str
    folder: str
    archive: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"


CIFAR10 = CifarSpec("cifar10", "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                    "c58f30108f718f92721af3b95e74349a", tuple(f"data_batch_{i}" for i in range(1, 6)),
                    "test_batch", "batches.meta", b"labels", b"label_names", 10,
                    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100 = CifarSpec("cifar100", "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
                     "eb9058c3a382ffc7106e4002c42a8d85", ("train",), "test", "meta", b"fine_labels",
                     b"fine_label_names", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def ensure_folder(spec: CifarSpec, root: Path, allow_download: bool) -> Path:
    """root/spec.folder, extracting (and, if allowed, first downloading) the official archive."""
    folder, tar = root / spec.folder, root / spec.archive
    if folder.is_dir():
        return folder
    how = (f"get {spec.url} (md5 {spec.md5}) and put it in {str(root)!r} or extract it there "
           f"(giving {spec.folder}/), or set data.root to the folder that holds it")
    if not tar.is_file():
        if not allow_download:
            raise DataError(f"{spec.title} not found: looked for {str(folder)!r} and {str(tar)!r}, and "
                            f"data.download is false; {how}")
        try:
            download(spec.url, tar)
        except DataError as e:
            raise DataError(f"{spec.title} not found: looked for {str(folder)!r} and {str(tar)!r}; {e}. "
                            f"Without network access, {how}") from None
    check_md5(tar, spec.md5, spec.url)
    extract_tar(tar, root)
    if not folder.is_dir():
        raise DataError(f"{str(tar)!r} did not contain {spec.folder}/; is it the official archive?")
    return folder


def _field(d, key: bytes, path: Path):
    if not isinstance(d, dict):
        raise DataError(f"{str(path)!r}: expected a pickled dict, got {type(d).__name__}")
    for k in (key, key.decode()):
        if k in d:
            return d[k]
    raise DataError(f"{str(path)!r}: missing field {key!r} (has {sorted(map(repr, d))})")


def read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (N x 32 x 32 x 3 uint8, labels)."""
    if not path.is_file():
        raise DataError(f"missing {str(path)!r}: the {spec.title} folder is incomplete; delete it and "
                        f"extract {spec.archive} again")
    d = load_pickle(path)
    data = _field(d, b"data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{str(path)!r}: field b'data' must be a uint8 N x 3072 array, got {desc}")
    labels = check_labels(list(_field(d, spec.label_key, path)), spec.num_classes, f"{path} field {spec.label_key!r}")
    if len(labels) != len(data):
        raise DataError(f"{str(path)!r}: {len(labels)} labels in {spec.label_key!r} for {len(data)} images")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def class_names(folder: Path, spec: CifarSpec) -> list[str]:
    path = folder / spec.meta_file
    if path.is_file():
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _field(load_pickle(path), spec.names_key, path)]
        if len(names) != spec.num_classes:
            raise DataError(f"{str(path)!r}: {len(names)} names in {spec.names_key!r}, expected {spec.num_classes}")
        return names
    return list(CIFAR10_CLASSES) if spec is CIFAR10 else [str(i) for i in range(spec.num_classes)]


def load(spec: CifarSpec, cfg) -> Source:
    root = cache_root(cfg.root)
    folder = ensure_folder(spec, root, cfg.download)
    parts = [read_batch(folder / f, spec) for f in spec.train_files]
    train = ArraySplit(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = ArraySplit(*read_batch(folder / spec.test_file, spec))
    return Source(name=spec.name, root=str(root), splits={"train": train, "test": test},
                  class_names=class_names(folder, spec), mean=spec.mean, std=spec.std)


@register("cifar10")
def load_cifar10(cfg) -> Source:
    return load(CIFAR10, cfg)


@register("cifar100")
def load_cifar100(cfg) -> Source:
    return load(CIFAR100, cfg)
