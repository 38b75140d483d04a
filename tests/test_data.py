"""raylg.data contracts on real data: digits and Fashion-MNIST as shipped, CIFAR / Flowers-102 /
imagefolder on small files written here in the official formats. CPU, seconds."""

from __future__ import annotations

import dataclasses
import gzip
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from raylg.config import DataConfig
from raylg.data import DATASETS, DataError, build, cifar
from raylg.data.archive import md5sum
from raylg.data.transforms import safe_posterize, train_transform

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason=f"Fashion-MNIST not installed at {FASHION} (apt-get install dataset-fashion-mnist)")


def cfg(**kw) -> DataConfig:
    return DataConfig(**{"num_workers": 0, **kw})


def digit_images(n: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """n real digits images as uint8 size x size, and their labels."""
    d = load_digits()
    imgs = [np.asarray(Image.fromarray(np.uint8(x * 255 / 16)).resize((size, size))) for x in d.images[:n]]
    return np.stack(imgs), d.target[:n]


# --- fixtures writing the official formats -----------------------------------------------------


def write_cifar(root: Path, name: str = "cifar10", per_class: int = 3, num_classes: int = 10, **overrides) -> Path:
    """A small cifar-10-batches-py/ or cifar-100-python/ folder; pixel [0,0,0] holds the label."""
    rng = np.random.default_rng(0)
    c100 = name == "cifar100"
    folder = root / ("cifar-100-python" if c100 else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = b"fine_labels" if c100 else b"labels"

    def batch(n_per_class):
        labels = [c for c in range(num_classes) for _ in range(n_per_class)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        data[:, 0] = labels
        return {b"batch_label": b"x", key: labels, b"data": data, b"filenames": [b"f"] * len(labels)}

    files = ["train"] if c100 else [f"data_batch_{i}" for i in range(1, 6)]
    for f in files:
        d = overrides.get(f) or batch(per_class)
        (folder / f).write_bytes(d if isinstance(d, bytes) else pickle.dumps(d))
    (folder / ("test" if c100 else "test_batch")).write_bytes(pickle.dumps(batch(1)))
    names = [f"c{i}".encode() for i in range(num_classes)]
    meta = {b"fine_label_names": names} if c100 else {b"label_names": names}
    (folder / ("meta" if c100 else "batches.meta")).write_bytes(pickle.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def flowers_root(tmp_path_factory) -> Path:
    """Flowers-102 layout: 102 classes, 2 train / 1 val / 1 test each, real digits JPEGs."""
    root = tmp_path_factory.mktemp("flowers")
    (root / "jpg").mkdir()
    n = 102 * 4
    imgs, _ = digit_images(n)
    labels = np.repeat(np.arange(1, 103), 4)  # image k (1-based) has class labels[k-1]
    for k in range(n):
        Image.fromarray(imgs[k]).convert("RGB").save(root / "jpg" / f"image_{k + 1:05d}.jpg", quality=90)
    ids = np.arange(1, n + 1)
    savemat(root / "imagelabels.mat", {"labels": labels[None, :]})
    savemat(root / "setid.mat", {"trnid": ids[ids % 4 < 2][None, :], "valid": ids[ids % 4 == 2][None, :],
                                 "tstid": ids[ids % 4 == 3][None, :]})
    return root


def write_folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 6, mode: str = "L", splits=("train", "test")):
    imgs, _ = digit_images(len(classes) * per_class)
    k = 0
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(per_class if split == "train" else 2):
                Image.fromarray(imgs[k % len(imgs)]).convert(mode).save(root / split / c / f"{j:03d}.png")
                k += 1
    return root


# --- registry and digits ---------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    assert {"digits", "fashion_mnist", "cifar10", "cifar100", "flowers102", "imagefolder"} <= set(DATASETS)
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'.*valid names: chaoyang, cifar10, cifar100, digits"):
        build(cfg(name="mnist"))


def test_digits_default_bundle():
    b = build(cfg())
    assert (b.num_classes, b.in_chans, b.mean, b.class_names[:2]) == (10, 1, (0.3053,), ["0", "1"])
    assert b.test is None and len(b.train) + len(b.val) == 1797
    d = b.describe()
    assert d["val_carved"] and d["sizes"] == {"train": len(b.train), "val": len(b.val), "test": None}
    assert abs(len(b.val) - 180) <= 10
    raw = b.view("train", transform=np.asarray)[0]["image"]
    assert raw.dtype == np.uint8 and raw.shape == (8, 8)
    assert b.train.split.images.max() == 255  # 0..16 scaled to 0..255
    # read from scikit-learn's CSV without importing sklearn.datasets: its loader's arrays, exactly
    from sklearn.datasets import load_digits

    from raylg.data.digits import digits_arrays, digits_csv

    assert digits_csv() is not None  # else digits_arrays is sklearn's loader and this compares it with itself
    images, target = digits_arrays()
    ref = load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)


@pytest.mark.parametrize("size", [32, 224])
def test_item_dict_and_batch_shapes(size):
    b = build(cfg(img_size=size, per_class=2))
    item = b.train[0]
    assert set(item) == {"image", "label", "index", "crop", "flip"}  # crop box + flip: for feature replay
    assert set(b.val[0]) == {"image", "label", "index"}
    assert item["image"].shape == (1, size, size) and item["image"].dtype == torch.float32
    assert isinstance(item["label"], int) and isinstance(item["index"], int)
    assert b.val[0]["image"].shape == (1, size, size)
    batch = next(iter(DataLoader(b.train, batch_size=4)))
    assert batch["image"].shape == (4, 1, size, size) and batch["label"].dtype == torch.int64
    assert batch["index"].tolist() == b.train.indices[:4].tolist()


def test_eval_transform_and_view_keep_indices():
    b = build(cfg(per_class=3, img_size=64))
    v = b.view("train", transform=b.eval_transform(32))
    assert v.indices.tolist() == b.train.indices.tolist()
    x = v[0]["image"]
    assert x.shape == (1, 32, 32) and torch.equal(x, v[0]["image"])  # eval is deterministic
    raw = np.asarray(b.view("train", transform=np.asarray)[0]["image"], dtype=np.float32) / 255
    small = b.eval_transform(8)(Image.fromarray(np.uint8(raw * 255)))  # native size: plain normalise
    assert torch.allclose(small[0], (torch.from_numpy(raw) - 0.3053) / 0.3759, atol=1e-4)
    with pytest.raises(DataError, match="no 'test' split here"):
        b.view("test")


# --- subsets, carved val, fingerprints ---------------------------------------------------------


def test_per_class_subset_is_deterministic_balanced_and_nested():
    a, a2 = build(cfg(per_class=5, split_seed=0)), build(cfg(per_class=5, split_seed=0))
    other = build(cfg(per_class=5, split_seed=1))
    assert a.train.indices.tolist() == a2.train.indices.tolist()
    assert a.train.indices.tolist() != other.train.indices.tolist()
    assert np.bincount(a.train.labels, minlength=10).tolist() == [5] * 10
    bigger = build(cfg(per_class=20, split_seed=0))
    assert set(a.train.indices) < set(bigger.train.indices)
    assert [a.train[k]["label"] for k in range(3)] == a.train.labels[:3].tolist()


def test_carved_val_disjoint_from_train_and_stable_across_per_class():
    full = build(cfg(per_class=0))
    vals = [build(cfg(per_class=n)).val.indices.tolist() for n in (0, 3, 50)]
    assert vals[0] == vals[1] == vals[2]
    assert not set(full.val.indices) & set(full.train.indices)
    assert sorted(set(full.val.indices) | set(full.train.indices)) == list(range(1797))
    assert np.all(np.bincount(full.val.labels, minlength=10) >= 15)  # stratified
    assert build(cfg(split_seed=7)).val.indices.tolist() != vals[0]


def test_fingerprint_tracks_the_subset():
    fp = build(cfg(per_class=5)).fingerprint("train")
    assert set(fp) >= {"name", "split", "per_class", "seed", "count", "sha256"}
    assert (fp["name"], fp["split"], fp["per_class"], fp["count"]) == ("digits", "train", 5, 50)
    assert build(cfg(per_class=5)).fingerprint("train") == fp
    assert build(cfg(per_class=6)).fingerprint("train")["sha256"] != fp["sha256"]
    assert build(cfg(per_class=5, split_seed=1)).fingerprint("train")["sha256"] != fp["sha256"]
    b = build(cfg(per_class=5))
    assert b.fingerprint("val")["sha256"] != fp["sha256"] and b.describe()["splits"]["train"]["sha256"] == fp["sha256"]


def test_carved_test_split_is_fixed_disjoint_and_named():
    plain = build(cfg(per_class=5))
    b = build(cfg(per_class=5, test_fraction=0.3))
    test = set(b.test.indices)
    assert abs(len(test) - 539) <= 10 and np.all(np.bincount(b.test.labels, minlength=10) >= 50)  # stratified
    assert not test & set(b.val.indices) and not test & set(b.train.indices)
    full = build(cfg(test_fraction=0.3))
    assert sorted(test | set(full.val.indices) | set(full.train.indices)) == list(range(1797))
    # one test split for every split_seed and per_class; val and train still follow split_seed
    other = build(cfg(per_class=8, split_seed=3, test_fraction=0.3))
    assert other.test.indices.tolist() == b.test.indices.tolist()
    assert other.fingerprint("test")["sha256"] == b.fingerprint("test")["sha256"]
    assert other.val.indices.tolist() != b.val.indices.tolist()
    d = b.describe()
    assert d["test_carved"] and d["test_fraction"] == 0.3 and d["sizes"]["test"] == len(test)
    # test_fraction 0 (the default) changes nothing
    assert plain.test is None and not plain.describe()["test_carved"]
    assert build(cfg(per_class=5, test_fraction=0.0)).fingerprint("train") == plain.fingerprint("train")
    with pytest.raises(DataError, match=r"per_class=120: class '\d' \(label \d\) has only \d+ images in train after "
                                        r"carving test \(data.test_fraction=0.3\) and val"):
        build(cfg(per_class=120, test_fraction=0.3))


def test_per_class_larger_than_a_class_names_it():
    with pytest.raises(DataError, match=r"per_class=170: class '\d' \(label \d\) has only 1\d\d images in train "
                                         r"after carving val"):
        build(cfg(per_class=170))


# --- transforms --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,chans", [("L", 1), ("RGB", 3)])
def test_randaugment_and_erasing_on_gray_and_rgb(mode, chans):
    mean, std = (0.5,) * chans, (0.25,) * chans
    t = train_transform(cfg(img_size=24, re_prob=1.0, auto_augment="rand-m9-mstd0.5-inc1"), mean, std, chans)
    img = Image.fromarray(digit_images(1)[0][0]).convert(mode)
    for _ in range(60):
        assert t(img).shape == (chans, 24, 24)
    ra = next(x for x in t.transforms if type(x).__name__ == "RandAugment")
    posterize = next(op for op in ra.ops if op.name == "PosterizeIncreasing")
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0  # 0 bits: Pillow 12+ raises
    assert np.asarray(posterize(img)).max() == 0
    rotate = next(op for op in ra.ops if op.name == "Rotate")
    rotate.prob = 1.0
    assert rotate(img).mode == mode  # border fill is a 1-tuple for 'L'


def test_safe_posterize_and_channel_checks():
    img = Image.fromarray(np.full((4, 4), 200, np.uint8))
    assert np.asarray(safe_posterize(img, 0)).max() == 0
    assert np.asarray(safe_posterize(img, 1)).max() == 128 and safe_posterize(img, 8) is img
    with pytest.raises(DataError, match=r"one value per channel \(1\)"):
        train_transform(cfg(), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), 1)


def test_datasets_pickle_for_workers_and_describe_is_json():
    b = build(cfg(per_class=2, img_size=16))
    clone = pickle.loads(pickle.dumps(b.train))  # DataLoader workers / Ray ship datasets by pickle
    assert clone.indices.tolist() == b.train.indices.tolist() and clone[0]["image"].shape == (1, 16, 16)
    assert json.loads(json.dumps(b.describe()))["splits"]["train"]["class_counts"] == [2] * 10


def test_no_augment_trains_on_the_eval_transform():
    b = build(cfg(augment=False, per_class=2))
    assert torch.equal(b.train[0]["image"], b.view("train")[0]["image"])


# --- Fashion-MNIST (real files) ----------------------------------------------------------------


@needs_fashion
def test_fashion_mnist_real():
    b = build(cfg(name="fashion_mnist", per_class=4))
    d = b.describe()
    assert d["val_carved"] and d["splits"]["train"]["source_count"] == 60000 and d["sizes"]["test"] == 10000
    assert d["sizes"]["val"] == 6000 and len(b.train) == 40 and b.in_chans == 1
    assert b.class_names[9] == "Ankle boot" and b.test[0]["image"].shape == (1, 32, 32)
    assert np.bincount(b.val.labels).tolist() == [600] * 10


def test_fashion_mnist_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"looked for train-images-idx3-ubyte.gz .* in '.*nowhere'"
                                         r".*apt-get install dataset-fashion-mnist"):
        build(cfg(name="fashion_mnist", root=str(tmp_path / "nowhere")))
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + b"\x00" * 12))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz': header says shape \(5, 0, 0\)"):
        build(cfg(name="fashion_mnist", root=str(tmp_path)))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"cannot read IDX file '.*train-images-idx3-ubyte.gz'"):
        build(cfg(name="fashion_mnist", root=str(tmp_path)))


# --- CIFAR (official pickle layout, written here) -------------------------------------------------


def test_cifar10_official_layout(tmp_path):
    write_cifar(tmp_path)
    b = build(cfg(name="cifar10", root=str(tmp_path), download=False, per_class=2, val_fraction=0.2))
    assert (b.num_classes, b.in_chans, b.class_names[3], b.mean[0]) == (10, 3, "c3", 0.4914)
    assert b.describe()["sizes"] == {"train": 20, "val": 30, "test": 10}
    raw = b.view("train", transform=np.asarray)
    for k in range(len(raw)):
        item = raw[k]
        assert item["image"].shape == (32, 32, 3) and item["image"][0, 0, 0] == item["label"]
    assert b.train[0]["image"].shape == (3, 32, 32)


def test_cifar100_fine_labels(tmp_path):
    write_cifar(tmp_path, "cifar100", per_class=2, num_classes=100)
    b = build(cfg(name="cifar100", root=str(tmp_path), download=False, img_size=224, augment=False))
    assert b.num_classes == 100 and b.class_names[99] == "c99" and len(b.test) == 100
    assert len(b.train) == 100 and len(b.val) == 100
    assert b.train[0]["image"].shape == (3, 224, 224)


def test_cifar_missing_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 not found: looked for '.*cifar-10-batches-py' and "
                                        r"'.*cifar-10-python.tar.gz', and data.download is false.*"
                                        r"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"):
        build(cfg(name="cifar10", root=str(tmp_path), download=False))


def test_cifar_checksum_mismatch_names_the_archive(tmp_path):
    src = write_cifar(tmp_path / "src")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname=src.name)
    with pytest.raises(DataError, match=r"checksum mismatch for '.*cifar-10-python.tar.gz': expected md5 "
                                        r"c58f30108f718f92721af3b95e74349a, got [0-9a-f]{32}"):
        build(cfg(name="cifar10", root=str(tmp_path), download=False))
    assert not (tmp_path / "cifar-10-batches-py").exists()  # nothing extracted from an unverified archive


def test_cifar_archive_with_matching_md5_is_extracted_and_bad_ones_refused(tmp_path):
    src = write_cifar(tmp_path / "src")
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    spec = dataclasses.replace(cifar.CIFAR10, md5=md5sum(tar_path))  # stand-in for the published md5
    b = cifar.load(spec, cfg(name="cifar10", root=str(tmp_path), download=False))
    assert len(b.splits["train"]) == 150 and (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()
    for name, payload in [("garbage", b"\x1f\x8b not a tar"), ("escape", None)]:
        root = tmp_path / name
        root.mkdir()
        bad = root / "cifar-10-python.tar.gz"
        if payload is None:  # a member that would land outside the cache folder
            with tarfile.open(bad, "w:gz") as tar:
                tar.add(src / "test_batch", arcname="../outside")
        else:
            bad.write_bytes(payload)
        with pytest.raises(DataError, match=r"cannot extract '.*cifar-10-python.tar.gz'"):
            cifar.load(dataclasses.replace(spec, md5=md5sum(bad)), cfg(root=str(root), download=False))
    assert not (tmp_path / "outside").exists()


class _OpenOnUnpickle:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_with_a_foreign_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((30, 3072), np.uint8), b"labels": [0] * 30, b"x": _OpenOnUnpickle(str(marker))}
    write_cifar(tmp_path, data_batch_2=pickle.dumps(evil))
    with pytest.raises(DataError, match=r"data_batch_2'?: refusing to unpickle global io.open"):
        build(cfg(name="cifar10", root=str(tmp_path), download=False))
    assert not marker.exists()


def test_cifar_corrupt_batch_bad_label_and_empty_class(tmp_path):
    good = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))})
    write_cifar(tmp_path / "a", data_batch_3=good[: len(good) // 2])
    with pytest.raises(DataError, match=r"data_batch_3' is not a readable pickle"):
        build(cfg(name="cifar10", root=str(tmp_path / "a"), download=False))
    write_cifar(tmp_path / "b", data_batch_1={b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]})
    with pytest.raises(DataError, match=r"data_batch_1 field b'labels': label 10 at position 1 is out of range \[0, 9\]"):
        build(cfg(name="cifar10", root=str(tmp_path / "b"), download=False))
    write_cifar(tmp_path / "c", data_batch_1={b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DataError, match=r"data_batch_1': missing field b'labels'"):
        build(cfg(name="cifar10", root=str(tmp_path / "c"), download=False))
    no_cat = {b"data": np.zeros((9, 3072), np.uint8), b"labels": [0, 1, 2, 4, 5, 6, 7, 8, 9]}
    write_cifar(tmp_path / "d", **{f"data_batch_{i}": no_cat for i in range(1, 6)})
    with pytest.raises(DataError, match=r"class 'c3' \(label 3\) has no images"):
        build(cfg(name="cifar10", root=str(tmp_path / "d"), download=False))


# --- Flowers-102 (official .mat + jpg layout, written here) ---------------------------------------


def test_flowers102_official_splits(flowers_root):
    b = build(cfg(name="flowers102", root=str(flowers_root), per_class=1, img_size=48))
    d = b.describe()
    assert not d["val_carved"] and d["sizes"] == {"train": 102, "val": 102, "test": 102}
    assert d["splits"]["train"]["source_count"] == 204 and b.in_chans == 3 and b.num_classes == 102
    item = b.train[5]
    assert item["image"].shape == (3, 48, 48)
    trnid = np.arange(1, 409)[np.arange(1, 409) % 4 < 2]
    assert item["label"] == (trnid[item["index"]] - 1) // 4  # index = position in trnid
    assert b.fingerprint("test")["source_split"] == "test"


def test_flowers102_errors(flowers_root, tmp_path):
    with pytest.raises(DataError, match=r"looked for '.*imagelabels.mat'.*robots.ox.ac.uk/~vgg/data/flowers/102"):
        build(cfg(name="flowers102", root=str(tmp_path)))
    (tmp_path / "jpg").symlink_to(flowers_root / "jpg")
    (tmp_path / "setid.mat").symlink_to(flowers_root / "setid.mat")
    labels = np.repeat(np.arange(1, 103), 4)
    labels[7] = 103
    savemat(tmp_path / "imagelabels.mat", {"labels": labels[None, :]})
    with pytest.raises(DataError, match=r"imagelabels.mat field 'labels': label 103 at position 7 is out of range \[1, 102\]"):
        build(cfg(name="flowers102", root=str(tmp_path)))


# --- imagefolder ---------------------------------------------------------------------------------


def test_imagefolder_gray_carves_val(tmp_path):
    write_folder(tmp_path)
    b = build(cfg(name="imagefolder", root=str(tmp_path), per_class=4, val_fraction=0.34))
    assert b.class_names == ["ant", "bee", "cat"] and b.in_chans == 1 and b.mean == (0.449,)
    assert b.describe()["sizes"] == {"train": 12, "val": 6, "test": 6} and b.val_carved
    assert b.train[0]["image"].shape == (1, 32, 32) and b.test[5]["label"] == 2


def test_imagefolder_rgb_with_val(tmp_path):
    write_folder(tmp_path, mode="RGB", splits=("train", "val"))
    b = build(cfg(name="imagefolder", root=str(tmp_path), img_size=224))
    assert b.in_chans == 3 and not b.val_carved and b.test is None and len(b.val) == 6
    assert b.val[0]["image"].shape == (3, 224, 224)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match=r"looked for '.*nothing/train'"):
        build(cfg(name="imagefolder", root=str(tmp_path / "nothing")))
    with pytest.raises(DataError, match="set data.root"):
        build(cfg(name="imagefolder"))
    write_folder(tmp_path)
    bad = tmp_path / "train" / "bee" / "001.png"
    bad.write_bytes(b"\x89PNG not really")
    b = build(cfg(name="imagefolder", root=str(tmp_path), augment=False))
    pos = [k for k in range(len(b.train)) if b.train.split.paths[b.train.indices[k]] == str(bad)]
    broken = b.train if pos else b.val
    k = pos[0] if pos else [k for k in range(len(b.val)) if b.val.split.paths[b.val.indices[k]] == str(bad)][0]
    with pytest.raises(DataError, match=r"cannot read image file '.*train/bee/001.png'"):
        broken[k]
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=r"class 'dog' has no images in '.*train/dog'"):
        build(cfg(name="imagefolder", root=str(tmp_path)))
    (tmp_path / "train" / "dog").rmdir()
    (tmp_path / "test" / "eel").mkdir()
    with pytest.raises(DataError, match=r"test/eel' is a class not present in train/"):
        build(cfg(name="imagefolder", root=str(tmp_path)))
