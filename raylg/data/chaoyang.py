"""Chaoyang (Zhu et al., "Hard Sample Aware Noise Robust Learning for Histopathology Image
Classification", IEEE TMI 2021): colon histopathology patches, 4 classes, in the layout the
reference (lkhl/tiny-transformers) and the dataset's own code read:

    root/train/*.JPG   root/test/*.JPG   root/train.json   root/test.json

Each JSON file is a list of records ``{"name": "train/<file>.JPG", "label": 0..3, ...}``:
``name`` is the image's path relative to root, ``label`` its class (extra keys, such as the
per-pathologist ``label_A/B/C`` of the released train.json, are ignored). Labels 0-3 are
normal, serrated, adenocarcinoma, adenoma (the dataset page's order). The official splits
are train (4,021 patches) and test (2,139); raylg carves val from train, as for CIFAR, so
the test split stays unseen until the end of a run. An item's index is its record's position
in its JSON list. Images are read lazily, as RGB; mean/std are ImageNet's, as the reference uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from .archive import cache_root
from .errors import DataError
from .registry import register
from .source import FileSplit, Source, check_labels

CHAOYANG_URL = "https://bupt-ai-cz.github.io/HSA-NRL/"
CLASSES = ["normal", "serrated", "adenocarcinoma", "adenoma"]
LAYOUT = "train/, test/, train.json, test.json (records with 'name', the path relative to the root, and 'label')"


def _records(root: Path, split: str) -> tuple[list[str], list[int]]:
    path = root / f"{split}.json"
    if not path.is_file():
        raise DataError(f"Chaoyang: looked for {str(path)!r} and it is not a file; data.root must hold {LAYOUT}. "
                        f"The dataset is at {CHAOYANG_URL}")
    try:
        records = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"Chaoyang: cannot read {str(path)!r} as JSON: {e}") from None
    if not isinstance(records, list) or not records:
        raise DataError(f"Chaoyang: {str(path)!r} must hold a non-empty JSON list of records, "
                        f"got {type(records).__name__}{' (empty)' if records == [] else ''}")
    paths, labels = [], []
    for i, rec in enumerate(records):
        where = f"{str(path)!r} record {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str) or "label" not in rec:
            raise DataError(f"Chaoyang: {where} must be an object with a string 'name' and a 'label', got {rec!r:.200}")
        label = rec["label"]
        if isinstance(label, bool) or not isinstance(label, int):
            raise DataError(f"Chaoyang: {where} ({rec['name']!r}): label {label!r} is not an integer")
        name = Path(rec["name"])
        if name.is_absolute() or ".." in name.parts:
            raise DataError(f"Chaoyang: {where}: name {rec['name']!r} must be a path relative to the root, inside it")
        image = root / name
        if not image.is_file():
            raise DataError(f"Chaoyang: {where} names {rec['name']!r}, but {str(image)!r} does not exist")
        paths.append(str(image))
        labels.append(label)
    return paths, check_labels(labels, len(CLASSES), f"Chaoyang {path}").tolist()


@register("chaoyang")
def load_chaoyang(cfg) -> Source:
    root = cache_root(cfg.root) / "chaoyang" if not cfg.root else Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"Chaoyang not found: {str(root)!r} is not a folder; data.root must hold {LAYOUT}. "
                        f"The dataset is at {CHAOYANG_URL}")
    splits = {split: FileSplit(*_records(root, split), mode="RGB") for split in ("train", "test")}
    return Source(name="chaoyang", root=str(root), splits=splits, class_names=list(CLASSES),
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
