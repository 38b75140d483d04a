"""The sweep's teacher stage: a teacher per data setting, trained once, published, reused.

A teacher is keyed by what it learned from, never by the sweep that asked for it: the
teacher run config (after taking the trial's data fields, `teacher.inherit`) and the data
fingerprint of that config's training split. Before any trial starts the driver works out
every trial's teacher, trains each key that storage does not hold yet as a Ray task with a
trial's resources (so on a cluster they spread over nodes), and publishes it under
STORAGE/_teachers/KEY/: the weights first, the card last, so a key whose card is missing is
not there and a half-written teacher is never seen. A published key is reused by every later
sweep on the same storage. Each trial is handed its own teacher's URI and copies it into a
node cache when it is on S3 (RAYLG_TEACHER_CACHE, default $TMPDIR/raylg-teachers), verified
against the card's sha256 either way.

A sweep with one fixed teacher (`teacher.path`) gets it checked against every trial's data
here instead, before any trial: the first point whose data the teacher did not learn from is
named.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from raylg import config as config_lib, storage, teacher as teacher_lib
from raylg.ray.spec import ARM, SEED, Sweep, relative

DIR = "_teachers"
WEIGHTS, CARD = "teacher.safetensors", "teacher.json"
# fields that do not change what a teacher learns: left out of its key
NOT_LEARNED = ("run.name", "run.out_dir", "run.progress", "run.resume", "run.device", "data.num_workers",
               "data.eval_batch_size", "data.download")


class TeacherStageError(RuntimeError):
    pass


def uses_teacher(cfg) -> bool:
    """Whether a trial's guidance consumes an online teacher: LG with beta > 0, logit KD or the
    distillation token. A baseline (beta 0, no teacher term) trains without one, as a plain run."""
    gd = cfg.guidance
    lg = gd.locality.source == "online" and gd.locality.beta > 0
    return lg or gd.kd.weight > 0 or gd.distill_token.weight > 0


def teacher_config(sweep: Sweep, trial_cfg):
    """The teacher run config for a trial: the sweep's teacher file, its `set`, and the trial's
    values of the inherited (data) fields."""
    t = sweep.spec.teacher
    flat = config_lib.flatten(trial_cfg)
    return config_lib.load(relative(sweep, t.config), {**t.set, **{k: flat[k] for k in t.inherit}})


def request_id(tcfg) -> str:
    """The teacher config's identity, without the data fingerprint (what a trial can compute
    alone): the fields that differ from the config's defaults, so a field added to the config
    later (at a default that changes nothing) does not orphan the teachers already published."""
    defaults = config_lib.flatten(type(tcfg)())
    flat = {k: v for k, v in config_lib.flatten(tcfg).items() if k not in NOT_LEARNED and v != defaults.get(k)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key_of(tcfg, fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([request_id(tcfg), fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]


def root(storage_root: str) -> str:
    return storage.join(storage_root, DIR)


# ---------------------------------------------------------------------------------------
# which points of the sweep there are, for the teacher's sake


def teacher_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Every arm x seed x value of the space fields that can change a trial's teacher (its
    inherited fields and the guidance terms that decide whether it has one); other fields keep
    the base's value. Range distributions contribute their bounds."""
    from raylg.ray.spec import _values_to_check

    s = sweep.spec
    relevant = set(s.teacher.inherit)
    axes: dict[str, list[Any]] = {}
    if s.arms:
        axes[ARM] = list(s.arms)
    if s.seeds:
        axes[SEED] = list(s.seeds)
    for key, entry in s.space.items():
        if key in relevant or key.startswith(("guidance.", "teacher.")):
            (dist, arg), = entry.items()
            axes[key] = _values_to_check(key, dist, arg)
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def describe(point: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in point.items()) or "the base config"


@dataclass
class Need:
    key: str
    request: str
    config: Any  # the teacher run Config
    fingerprint: dict[str, Any]


def plan(sweep: Sweep) -> dict[str, Need]:
    """request id -> the teacher it stands for, for every point that uses a teacher."""
    from raylg import data

    needs: dict[str, Need] = {}
    prints: dict[str, dict] = {}
    for point in teacher_points(sweep):
        cfg = sweep.trial_config(point)
        if not uses_teacher(cfg):
            continue
        tcfg = teacher_config(sweep, cfg)
        req = request_id(tcfg)
        if req in needs:
            continue
        dkey = json.dumps(config_lib.flatten(tcfg.data), sort_keys=True, default=str)
        if dkey not in prints:
            prints[dkey] = data.build(tcfg.data).fingerprint("train")
        needs[req] = Need(key_of(tcfg, prints[dkey]), req, tcfg, prints[dkey])
    return needs


def check_fixed(sweep: Sweep, weights: str) -> dict:
    """One teacher for every trial: its card against each distinct data setting of the points
    that use it. TeacherStageError names the first point that clashes."""
    from raylg import data

    card = teacher_lib.verify(weights)
    seen = set()
    for point in teacher_points(sweep):
        cfg = sweep.trial_config(point)
        if not uses_teacher(cfg):
            continue
        dkey = json.dumps(config_lib.flatten(cfg.data), sort_keys=True, default=str)
        if dkey in seen:
            continue
        seen.add(dkey)
        bundle = data.build(cfg.data)
        try:
            teacher_lib.check_data(card, bundle.fingerprint("train"), bundle.num_classes, repr(str(weights)))
        except teacher_lib.TeacherError as e:
            raise TeacherStageError(f"trial point ({describe(point)}): {e}; give each data setting its own teacher "
                                    f"with teacher.config instead of teacher.path") from None
    return card


# ---------------------------------------------------------------------------------------
# published teachers


def published_card(storage_root: str, key: str) -> dict | None:
    """The card of a published key, or None. Only a card marks a complete teacher (written last)."""
    try:
        return json.loads(storage.read_bytes(storage.join(storage.join(root(storage_root), key), CARD)))
    except FileNotFoundError:
        return None


def publish(run_dir: Path, storage_root: str, key: str) -> dict:
    """Turn a finished teacher run into STORAGE/_teachers/KEY/{weights, card}: weights first,
    the card last (locally the whole directory is renamed into place)."""
    weights, card = teacher_lib.publish(run_dir)
    dest = storage.join(root(storage_root), key)
    if storage.is_s3(dest):
        storage.publish_file(weights, storage.join(dest, WEIGHTS), card["sha256"])
        storage.write_bytes(storage.join(dest, CARD), json.dumps(card, indent=2).encode())
        return card
    final = Path(dest)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    shutil.copy2(weights, stage / WEIGHTS)
    shutil.copy2(teacher_lib.card_path(weights), stage / CARD)
    try:
        os.rename(stage, final)  # atomic; fails if another driver published the same key first
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        if published_card(storage_root, key) is None:
            raise
    return card


def fetch(uri: str, cache: Path | None = None) -> str:
    """A local, hash-checked path to a published teacher's weights (URI of its directory). On
    S3 it is copied once into a node cache (temporary name, then rename)."""
    if not storage.is_s3(uri):
        weights = Path(uri) / WEIGHTS
        teacher_lib.verify(weights)
        return str(weights)
    cache = cache or Path(os.environ.get("RAYLG_TEACHER_CACHE") or Path(tempfile.gettempdir()) / "raylg-teachers")
    local = cache / storage.basename(uri)
    weights = local / WEIGHTS
    card = json.loads(storage.read_bytes(storage.join(uri, CARD)))
    if weights.is_file() and teacher_lib.card_path(weights).is_file():
        try:
            teacher_lib.verify(weights, card["sha256"])
            return str(weights)
        except teacher_lib.TeacherError:
            shutil.rmtree(local, ignore_errors=True)  # a damaged copy is fetched again
    local.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    with open(stage / WEIGHTS, "wb") as f:
        for chunk in storage.stream_chunks(storage.join(uri, WEIGHTS)):
            f.write(chunk)
    (stage / CARD).write_text(json.dumps(card, indent=2))
    teacher_lib.verify(stage / WEIGHTS, card["sha256"])
    try:
        os.rename(stage, local)
    except OSError:  # another trial on this node fetched it first
        shutil.rmtree(stage, ignore_errors=True)
    return str(weights)


# ---------------------------------------------------------------------------------------
# the stage


def _train_one(flat_cfg: dict[str, Any], storage_root: str, key: str, cpus: float) -> dict:
    """Ray task body: train one teacher in a scratch directory, publish it, return its card."""
    import torch

    from raylg.fit import fit

    torch.set_num_threads(max(1, int(cpus)))
    cfg = config_lib.unflatten(flat_cfg)
    with tempfile.TemporaryDirectory(prefix=f"raylg-teacher-{key}-") as tmp:
        cfg = config_lib.apply_overrides(cfg, {"run.out_dir": tmp, "run.name": key, "run.progress": False})
        t0 = time.perf_counter()
        fit(cfg, Path(tmp) / key)
        card = publish(Path(tmp) / key, storage_root, key)
    return {**card, "seconds": time.perf_counter() - t0}


def run(sweep: Sweep, storage_root: str, log: Callable[[str], None] = print) -> dict[str, str]:
    """Train what is missing, reuse what is published; request id -> teacher directory URI."""
    import ray

    needs = plan(sweep)
    if not needs:
        return {}
    flats = {req: config_lib.flatten(n.config) for req, n in needs.items()}
    varying = [k for k in sweep.spec.teacher.inherit if len({json.dumps(f[k]) for f in flats.values()}) > 1] or ["data.per_class"]
    what = lambda req: ", ".join(f"{k} {flats[req][k]}" for k in varying)  # the data setting, in the sweep's own terms
    out, todo = {}, []
    for req, need in needs.items():
        uri = storage.join(root(storage_root), need.key)
        out[req] = uri
        card = published_card(storage_root, need.key)
        if card is not None and card.get("fingerprint") == need.fingerprint:
            if not storage.is_s3(uri):
                teacher_lib.verify(Path(uri) / WEIGHTS)
            log(f"teacher {need.key}: reusing ({what(req)}; val top-1 {card['val_top1']:.2f}%)")
        else:
            todo.append(need)
    if not todo:
        return out
    r = sweep.spec.resources
    task = ray.remote(_train_one).options(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_retries=1,
                                          name="raylg-teacher")
    refs = {}
    for need in todo:
        log(f"teacher {need.key}: training {need.config.model.name} on {need.config.data.name} "
            f"({what(need.request)}; {need.config.schedule.epochs} epoch{'s' if need.config.schedule.epochs != 1 else ''})")
        refs[task.remote(config_lib.flatten(need.config), storage_root, need.key, r.cpus_per_worker)] = need
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        need = refs[ready[0]]
        try:
            card = ray.get(ready[0])
        except Exception as e:
            for ref in pending:
                ray.cancel(ref, force=True)
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise TeacherStageError(f"teacher {need.key} ({what(need.request)}) failed to train: {first}") from None
        log(f"teacher {need.key}: val top-1 {card['val_top1']:.2f}% ({card['seconds']:.0f}s)")
    return out
