"""Chaoyang and Tiny-ImageNet on small files written here in their official layouts: splits,
labels, the per_class regime, carved val, fingerprints, and the errors for broken layouts.
CPU, about a second."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raylg import config as config_lib
from raylg.config import DataConfig
from raylg.data import DATASETS, DataError, build
from raylg.preflight import preflight

WNIDS = ["n02124075", "n01443537", "n01629819"]  # wnids.txt order is not sorted; labels follow sorted order


def cfg(**kw) -> DataConfig:
    return DataConfig(**{"num_workers": 0, **kw})


def _image(path: Path, value: int, mode: str = "RGB", size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pixels[0, 0] = value  # the first pixel says which image it is
    Image.fromarray(pixels).convert(mode).save(path, quality=95)


def write_chaoyang(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    """root/train/*.JPG, root/test/*.JPG, train.json, test.json (records as released: extra keys)."""
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        records = []
        for label in range(4):
            for k in range(n):
                name = f"{split}/{500 + label}_{k}-IMG{k:03d}x{label:03d}-{label}.JPG"
                _image(root / name, 10 * label + k)
                records.append({"label": label, "name": name, "label_A": label, "label_B": label, "label_C": label})
        (root / f"{split}.json").write_text(json.dumps(records[::-1]))  # not grouped by class
    return root


def write_tiny_imagenet(base: Path, train_per_class: int = 4, val_per_class: int = 2) -> Path:
    root = base / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(w + "\n" for w in WNIDS))
    lines, k = [], 0
    for c, wnid in enumerate(WNIDS):
        for j in range(train_per_class):
            _image(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", 10 * c + j, mode="L" if j == 0 else "RGB")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for _ in range(val_per_class):
            _image(root / "val" / "images" / f"val_{k}.JPEG", 100 + k)
            lines.append(f"val_{k}.JPEG\t{wnid}\t0\t1\t62\t63\n")
            k += 1
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    (root / "test" / "images").mkdir(parents=True)  # the unlabelled official test split: never read
    return root


# --- Chaoyang --------------------------------------------------------------------------------------


def test_chaoyang_splits_labels_per_class_and_fingerprint(tmp_path):
    root = write_chaoyang(tmp_path / "chaoyang")
    b = build(cfg(name="chaoyang", root=str(root), per_class=2, val_fraction=0.25, img_size=24))
    d = b.describe()
    assert b.class_names == ["normal", "serrated", "adenocarcinoma", "adenoma"] and b.in_chans == 3
    assert d["val_carved"] and d["sizes"] == {"train": 8, "val": 4, "test": 8}
    assert d["splits"]["train"]["class_counts"] == [2, 2, 2, 2] and d["splits"]["test"]["class_counts"] == [2] * 4
    records = json.loads((root / "test.json").read_text())
    item = b.test[3]
    assert item["image"].shape == (3, 24, 24) and item["label"] == records[3]["label"]  # index = record position
    assert b.source.splits["test"].paths[3] == str(root / records[3]["name"])
    fp = b.fingerprint("train")
    assert fp == build(cfg(name="chaoyang", root=str(root), per_class=2, val_fraction=0.25)).fingerprint("train")
    other = build(cfg(name="chaoyang", root=str(root), per_class=1, val_fraction=0.25))
    assert fp["sha256"] != other.fingerprint("train")["sha256"]
    assert b.fingerprint("val") == build(cfg(name="chaoyang", root=str(root), per_class=1, val_fraction=0.25)).fingerprint("val")


def test_chaoyang_errors_name_the_file_and_record(tmp_path):
    with pytest.raises(DataError, match=r"'.*nowhere' is not a folder; data.root must hold train/, test/, train.json, "
                                        r"test.json \(records with 'name'"):
        build(cfg(name="chaoyang", root=str(tmp_path / "nowhere")))
    root = write_chaoyang(tmp_path / "c")
    (root / "test.json").unlink()
    with pytest.raises(DataError, match=r"looked for '.*c/test.json' and it is not a file"):
        build(cfg(name="chaoyang", root=str(root)))
    records = [{"name": "train/missing.JPG", "label": 0}]
    (root / "test.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"test.json' record 0 names 'train/missing.JPG', "
                                         r"but '.*c/train/missing.JPG' does not exist"):
        build(cfg(name="chaoyang", root=str(root)))
    train = json.loads((root / "train.json").read_text())
    for bad, match in [
        (dict(train[2], label=4), r"train.json: label 4 at position 2 is out of range \[0, 3\]"),
        (dict(train[2], label="2"), r"train.json' record 2 \(.*\): label '2' is not an integer"),
        ({"file": "x.JPG", "label": 1}, r"train.json' record 2 must be an object with a string 'name' and a 'label'"),
        (dict(train[2], name="../outside.JPG"), r"record 2: name '../outside.JPG' must be a path relative to the root"),
    ]:
        (root / "train.json").write_text(json.dumps(train[:2] + [bad] + train[3:]))
        with pytest.raises(DataError, match=match):
            build(cfg(name="chaoyang", root=str(root)))
    (root / "train.json").write_text("{not json")
    with pytest.raises(DataError, match=r"cannot read '.*train.json' as JSON"):
        build(cfg(name="chaoyang", root=str(root)))


# --- Tiny-ImageNet -----------------------------------------------------------------------------


def test_tiny_imagenet_official_val_is_the_test_split_and_labels_follow_sorted_wnids(tmp_path):
    root = write_tiny_imagenet(tmp_path)
    for data_root in (tmp_path, root):  # the folder holding tiny-imagenet-200/, or that folder itself
        b = build(cfg(name="tiny_imagenet", root=str(data_root), per_class=2, val_fraction=0.25, img_size=32))
        assert b.source.root == str(root)
    assert b.class_names == sorted(WNIDS) and b.num_classes == 3 and b.in_chans == 3
    d = b.describe()
    assert d["val_carved"] and d["sizes"] == {"train": 6, "val": 3, "test": 6}
    # val_annotations.txt line k is test item k; wnid n02124075 (first in wnids.txt) is label 2
    assert [b.test[k]["label"] for k in range(6)] == [2, 2, 0, 0, 1, 1]
    assert b.source.splits["test"].paths[0] == str(root / "val" / "images" / "val_0.JPEG")
    gray = b.source.splits["train"].image(0)  # n01443537_0.JPEG was written grayscale
    assert gray.mode == "RGB" and b.train[0]["image"].shape == (3, 32, 32)
    assert b.fingerprint("test")["count"] == 6 and b.fingerprint("train")["per_class"] == 2
    again = build(cfg(name="tiny_imagenet", root=str(root), per_class=2, val_fraction=0.25))
    assert again.fingerprint("train") == b.fingerprint("train") and again.fingerprint("test") == b.fingerprint("test")


def test_tiny_imagenet_annotation_naming_a_missing_image_names_the_file_and_line(tmp_path):
    root = write_tiny_imagenet(tmp_path)
    (root / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(DataError, match=r"val_annotations.txt' line 4 names val_3.JPEG, but '.*val/images/val_3.JPEG' "
                                        r"does not exist"):
        build(cfg(name="tiny_imagenet", root=str(tmp_path)))


def test_tiny_imagenet_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"looked for '.*empty/wnids.txt' and '.*empty/tiny-imagenet-200/wnids.txt'\. "
                                        r"Expected the official layout: tiny-imagenet-200/wnids.txt, "
                                        r"tiny-imagenet-200/train/<wnid>/images/\*.JPEG"):
        build(cfg(name="tiny_imagenet", root=str(tmp_path / "empty")))
    root = write_tiny_imagenet(tmp_path)
    ann = root / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines(keepends=True)
    ann.write_text("".join(lines[:1] + ["val_1.JPEG\tn09999999\t0\t0\t1\t1\n"] + lines[2:]))
    with pytest.raises(DataError, match=r"line 2: 'n09999999' \(for val_1.JPEG\) is not one of the 3 classes of wnids.txt"):
        build(cfg(name="tiny_imagenet", root=str(root)))
    ann.write_text("".join(lines[:3] + lines[:1]))
    with pytest.raises(DataError, match=r"line 4: val_0.JPEG is annotated twice \(first on line 1\)"):
        build(cfg(name="tiny_imagenet", root=str(root)))
    ann.write_text("".join(lines))
    for f in (root / "train" / WNIDS[1] / "images").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"class n01443537 \(wnids.txt\) has no images: looked for '.*n01443537/images/\*.JPEG'"):
        build(cfg(name="tiny_imagenet", root=str(root)))
    (root / "wnids.txt").write_text("n01443537\nbeagle\n")
    with pytest.raises(DataError, match=r"wnids.txt' line 2: 'beagle' is not a WordNet id"):
        build(cfg(name="tiny_imagenet", root=str(root)))


def test_both_are_registered_and_pass_preflight():
    assert {"chaoyang", "tiny_imagenet"} <= set(DATASETS)
    for name in ("chaoyang", "tiny_imagenet"):
        preflight(config_lib.load(None, {"data.name": name, "model.name": "deit_micro_patch4_32"}))
