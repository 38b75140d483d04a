"""LG targets from precomputed shards instead of a teacher: `ShardTeacher` and the run checks.

`ShardTeacher` is called like `OnlineTeacher` (batch -> TeacherOut) and never runs a network:
it gathers each item's stage maps by ``batch["index"]`` and replays the item's crop box and
flip on them (raylg.features.replay), on the batch's device.

`for_run` opens the feature set named by guidance.locality.shards and refuses it, naming
what differs, unless it fits the run:
- the teacher behind the features was trained on exactly the run's training images (the
  same rule as an online teacher); when teacher.path is also set, its weights are the ones
  the features came from; teacher.img_size matches; every guided stage is stored;
- the features cover the run's training images: either the manifest's dataset fingerprint
  is the run's and the shards hold exactly its indices, or the manifest describes a larger
  selection of the same dataset and split (per_class 0 or a larger per_class, more images)
  and the shards hold every index the run needs, with the same labels. Any other difference
  between the two fingerprints (e.g. the same selection with another sha256) is refused,
  naming the fields that differ.
"""

from __future__ import annotations

import numpy as np
import torch

from raylg import teacher as teacher_lib
from raylg.features.errors import FeatureError
from raylg.features.replay import replay
from raylg.features.store import FeatureStore
from raylg.guidance.base import TeacherOut

FINGERPRINT_KEYS = ("name", "split", "source_split", "per_class", "seed", "count", "sha256")


class ShardTeacher:
    """Precomputed teacher maps with each item's crop and flip replayed. Not an nn.Module."""

    def __init__(self, store: FeatureStore, stages: list[int] | None = None):
        self.store = store
        self.stages = sorted(store.stages) if stages is None else list(stages)
        self.n_stages = len(store.manifest["teacher"]["stage_channels"])
        self.device = torch.device("cpu")

    def to(self, device) -> "ShardTeacher":
        self.device = torch.device(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: dict) -> TeacherOut:
        if "crop" not in batch or "flip" not in batch:
            raise FeatureError("the batch has no 'crop'/'flip' entries, so precomputed features cannot follow the image's "
                               "crop and flip; the train transform must be raylg's (GeometryCompose)")
        index = batch["index"]
        index = index.cpu().numpy() if torch.is_tensor(index) else np.asarray(index)
        crop = torch.as_tensor(batch["crop"]).to(self.device, torch.float32)
        flip = torch.as_tensor(batch["flip"]).to(self.device, torch.bool)
        stages: list = [None] * self.n_stages
        for s in self.stages:
            maps = self.store.gather(index, s).to(self.device, non_blocking=True).float()
            stages[s] = replay(maps, crop, flip)
        return TeacherOut(stages=stages, logits=None)


def _differs(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in FINGERPRINT_KEYS if a.get(k) != b.get(k)}


def _larger_selection(ds: dict, fingerprint: dict) -> bool:
    """The manifest describes a larger selection of the run's dataset and split than the run's own
    (the only way a differing fingerprint can still describe the run's images)."""
    ours, theirs = fingerprint.get("per_class") or 0, ds.get("per_class") or 0
    more = (ds.get("count") or 0) > (fingerprint.get("count") or 0)
    return more and (theirs == 0 or (ours != 0 and theirs > ours))


def check_teacher(m: dict, cfg, fingerprint: dict, num_classes: int) -> None:
    t, where = m["teacher"], m["uri"]
    try:
        teacher_lib.check_data(t, fingerprint, num_classes, f"behind the features {where!r}")
    except teacher_lib.TeacherError as e:
        raise FeatureError(str(e)) from None
    if cfg.teacher.path:
        card = teacher_lib.verify(cfg.teacher.path)
        if card["sha256"] != t["sha256"]:
            raise FeatureError(f"teacher.path {cfg.teacher.path!r} has sha256 {card['sha256'][:16]}… but the features "
                               f"{where!r} were computed by teacher {t['sha256'][:16]}… ({t['arch']}); point teacher.path at "
                               "that teacher, leave it empty, or re-run jobs/precompute_features.py")
    if cfg.teacher.img_size != t["img_size"]:
        raise FeatureError(f"teacher.img_size is {cfg.teacher.img_size} but the features {where!r} were computed at "
                           f"{t['img_size']}px")
    stored = sorted(s["stage"] for s in m["stages"])
    missing = [s for s in cfg.guidance.locality.teacher_stages if s not in stored]
    if missing:
        raise FeatureError(f"guidance.locality.teacher_stages {cfg.guidance.locality.teacher_stages}: stage(s) {missing} are "
                           f"not in the features {where!r} (stored: {stored})")


def check_coverage(store: FeatureStore, fingerprint: dict, indices: np.ndarray, labels: np.ndarray) -> str:
    """FeatureError unless the store holds the run's training images; returns how they match."""
    m, where = store.manifest, store.uri
    ds = m["dataset"]
    diff = _differs(ds, fingerprint)
    shards = ", ".join(s["name"] for s in m["shards"])
    indices = np.asarray(indices, dtype=np.int64)
    if not diff:
        have = store.indices()
        if len(have) != len(indices) or not np.array_equal(have, np.sort(indices)):
            extra = np.setdiff1d(have, indices)[:5].tolist()
            missing = np.setdiff1d(indices, have)[:5].tolist()
            raise FeatureError(f"the features {where!r} (shards {shards}) hold {len(have)} rows but the run's train split has "
                               f"{len(indices)} images; indices missing from the shards: {missing}, not in the run: {extra}")
        how = "exact"
    else:
        lines = ", ".join(f"{k}: features {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        if ds.get("name") != fingerprint.get("name") or ds.get("source_split") != fingerprint.get("source_split"):
            raise FeatureError(f"the features {where!r} were computed on other data than this run ({lines})")
        ok = store.has(indices)
        if not ok.all():
            raise FeatureError(f"the features {where!r} were computed on other training images than this run ({lines}) and "
                               f"lack {int((~ok).sum())} of the run's {len(indices)} indices "
                               f"(e.g. {indices[~ok][:5].tolist()}, shards {shards})")
        if not _larger_selection(ds, fingerprint):
            raise FeatureError(f"the features {where!r} were computed on other training images than this run ({lines}): "
                               "features whose dataset fingerprint differs from the run's serve it only when they cover a "
                               "larger selection of the same data (per_class 0 or a larger per_class, more images); "
                               "re-run jobs/precompute_features.py on this run's data")
        if ds.get("count") != store.rows:
            raise FeatureError(f"the features {where!r}: the manifest's dataset fingerprint counts {ds.get('count')} images but "
                               f"its shards hold {store.rows} rows ({shards})")
        how = f"subset: the run's {len(indices)} images of the {store.rows} in the shards"
    got = store.labels(indices)
    bad = np.flatnonzero(got != np.asarray(labels))
    if bad.size:
        i = int(bad[0])
        raise FeatureError(f"the features {where!r} give dataset index {int(indices[i])} label {int(got[i])} but the run's data "
                           f"says {int(labels[i])} ({bad.size} label(s) differ)")
    return how


def for_run(cfg, bundle) -> tuple[ShardTeacher, dict]:
    """(targets, teacher card as the manifest states it) for a run with guidance.locality.source == shards."""
    store = FeatureStore.open(cfg.guidance.locality.shards)
    fp = bundle.fingerprint("train")
    check_teacher(store.manifest, cfg, fp, bundle.num_classes)
    how = check_coverage(store, fp, bundle.train.indices, bundle.train.labels)
    card = dict(store.manifest["teacher"], source="shards", manifest=store.uri, coverage=how)
    return ShardTeacher(store, list(cfg.guidance.locality.teacher_stages)), card
