"""Deterministic, class-balanced index selection: the carved val split and per_class subsets.

Both work class by class with a generator seeded by (split_seed, purpose, class), so a
class's choice depends only on its own images and the seed. The carved val split depends
on (labels, val_fraction, split_seed) only, never on per_class. A per_class subset takes the
first N of a per-class permutation, so a smaller N is a subset of a larger one.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

_CARVE, _PER_CLASS, _CARVE_TEST = 0, 1, 2
TEST_SEED = 0  # the carved test split is the same for every split_seed


def _rng(seed: int, purpose: int, cls: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), purpose, int(cls)])


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def require_every_class(labels: np.ndarray, class_names: list[str], where: str) -> None:
    """DataError naming the first class with no image in ``labels``."""
    counts = class_counts(labels, len(class_names))
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        c = int(empty[0])
        raise DataError(f"{where}: class {class_names[c]!r} (label {c}) has no images "
                        f"({empty.size} empty class(es) in all: {', '.join(repr(class_names[int(k)]) for k in empty[:10])})")


def carve_val(labels: np.ndarray, fraction: float, seed: int, *, purpose: int = _CARVE,
              field: str = "data.val_fraction") -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of positions into (train, val). Each class with >= 2 images gives
    round(fraction * count) images to val, at least 1 and never all of them."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{field}: {fraction!r} is out of range (between 0 and 1, exclusive)")
    labels = np.asarray(labels, dtype=np.int64)
    train, val = [], []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        n_val = 0 if len(pos) < 2 else min(max(int(round(fraction * len(pos))), 1), len(pos) - 1)
        perm = _rng(seed, purpose, c).permutation(pos)
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def carve_test(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (rest, test) positions, as carve_val, with one fixed seed for every run."""
    return carve_val(labels, fraction, TEST_SEED, purpose=_CARVE_TEST, field="data.test_fraction")


def per_class_subset(labels: np.ndarray, positions: np.ndarray, n: int, seed: int,
                     class_names: list[str], pool: str) -> np.ndarray:
    """n positions of every class, drawn from ``positions``; DataError names a class with fewer.

    ``pool`` says what the positions are (e.g. "train after carving val"), for the message.
    """
    if n < 0:
        raise DataError(f"data.per_class: {n!r} is out of range (>= 0; 0 = all images)")
    positions = np.asarray(positions, dtype=np.int64)
    if n == 0:
        return np.sort(positions)
    labels = np.asarray(labels, dtype=np.int64)
    pool_labels = labels[positions]
    out = []
    for c, name in enumerate(class_names):
        pos = positions[pool_labels == c]
        if len(pos) < n:
            raise DataError(f"data.per_class={n}: class {name!r} (label {c}) has only {len(pos)} images "
                            f"in {pool}; lower data.per_class to at most {int(min(class_counts(pool_labels, len(class_names))))}")
        out.append(_rng(seed, _PER_CLASS, c).permutation(pos)[:n])
    return np.sort(np.concatenate(out))
