"""One typed config for a run: dataclasses, YAML in and out, dotted overrides, flat dicts.

The same object flows from jobs/ to the per-worker loop and into MLflow params; a sweep's
search space is written over its dotted keys (``optim.lr``, ``guidance.locality.beta``).
Nothing here knows about datasets, models or Ray: name checks against registries live in
``raylg.preflight``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the dotted key."""


@dataclass
class DataConfig:
    name: str = "digits"  # digits | fashion_mnist | cifar10 | cifar100 | flowers102 | chaoyang | tiny_imagenet | imagefolder
    root: str = ""  # "" = the dataset's default location (or download cache)
    download: bool = True  # CIFAR: fetch into the cache when missing and the network allows
    img_size: int = 32  # student input side; 224 is the paper's upsampled setting
    per_class: int = 0  # 0 = every training image; N = N per class (tiny-data regime)
    val_fraction: float = 0.1  # carved from train (stratified) when the set has no val split
    # carved from train (stratified, one fixed seed: every split_seed tests on the same images) when the
    # set has no test split, before val; 0 = none (sets without a test split then report best val only)
    test_fraction: float = 0.0
    split_seed: int = 0  # seeds the per_class subset and the carved val split
    # train augmentation (the paper's recipe by default); eval is a plain resize
    augment: bool = True
    scale_min: float = 0.08  # RandomResizedCrop lower scale
    hflip: float = 0.5
    auto_augment: str = "rand-m9-mstd0.5-inc1"  # "" = off
    re_prob: float = 0.25  # random erasing
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    num_workers: int = 2  # DataLoader worker processes
    eval_batch_size: int = 256
    # auto: the split as a uint8 tensor on the training device, augmented there in batches, when it fits
    # device_budget_mib and the device implements the augmentation (else the loader); device: that or an
    # error naming why not; loader: per-image PIL transforms in DataLoader workers
    pipeline: Literal["auto", "device", "loader"] = "auto"
    device_budget_mib: float = 0  # 0 = 25% of the device's free memory (CPU: of MemAvailable)


@dataclass
class ModelConfig:
    name: str = "deit_tiny_patch4_32"  # any student in timm's registry (raylg registers its own)
    drop_path: float = 0.1
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (depth, embed_dim, ...)


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 5e-4
    batch_size: int = 128  # global batch; split over DDP workers
    weight_decay: float = 0.05  # never on biases, norms, tokens, position embeddings
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    clip_grad: float = 0.0  # max grad norm; 0 = off


@dataclass
class ScheduleConfig:
    epochs: int = 300
    warmup_epochs: float = 20
    warmup_lr: float = 5e-7  # lr at step 0, rising linearly to optim.lr
    min_lr: float = 5e-6  # cosine floor


@dataclass
class TeacherConfig:
    path: str = ""  # teacher weights (.safetensors, with its .json card beside); "" = none
    img_size: int = 32  # the teacher sees the student's augmented image resized to this
    bn_mode: Literal["train", "eval"] = "train"  # reference: batch statistics (train mode)


@dataclass
class LocalityConfig:
    beta: float = 2.5  # weight of the LG term; 0 = baseline arm (term still computed and logged)
    student_blocks: list[int] = field(default_factory=list)  # [] = the student's default map
    teacher_stages: list[int] = field(default_factory=lambda: [0, 1, 2])
    source: Literal["online", "shards"] = "online"
    shards: str = ""  # manifest URI when source == shards
    # per pair, before the MSE (the reference's DISTILLATION.INTER_TRANSFORM): linear = a trainable
    # 1x1 aligner; attention = channel-mean of squares, L2-normalised per image; similarity = the
    # batch's Gram matrix of flattened maps, L2-normalised per row (both: no parameters)
    transform: Literal["linear", "attention", "similarity"] = "linear"


@dataclass
class DrlocConfig:
    weight: float = 0.0  # lambda of the DRLoc term; 0 = off (no head built); 0.1-0.5 in the paper
    m: int = 64  # token pairs sampled per image from the final token grid


@dataclass
class DistillTokenConfig:
    weight: float = 0.0  # CE of DeiT's distillation head vs the teacher's hard labels; 0 = off (plain student)


@dataclass
class KdConfig:
    weight: float = 0.0  # tau^2 * KL to the teacher's softened logits; 0 = off
    tau: float = 4.0  # temperature


@dataclass
class RelvitConfig:
    """RelViT (Camporese et al., BMVC 2022): self-supervised tasks on every final patch token.
    Each task is its own term, weighted weight x its factor, on iff that product is > 0."""

    weight: float = 0.0  # multiplier of every RelViT task; 0 = off (no heads built)
    relations: float = 1.0  # 9-class spatial relation of every ordered token pair (their use_relations)
    positions: float = 1.0  # absolute grid position of every token (their use_abs_positions)
    distances: float = 0.0  # normalised distance of every token pair (their use_distances; off in their scripts)
    shuffle: bool = False  # permute the image's patch blocks per image first (for the SSL-only stage)


@dataclass
class GuidanceConfig:
    """Loss terms beside CE. LG is built whenever there is a teacher (beta 0 = computed, weighted
    by 0); each other term is on iff its weight > 0, so a sweep switches it through the weight."""

    locality: LocalityConfig = field(default_factory=LocalityConfig)
    drloc: DrlocConfig = field(default_factory=DrlocConfig)
    distill_token: DistillTokenConfig = field(default_factory=DistillTokenConfig)
    kd: KdConfig = field(default_factory=KdConfig)
    relvit: RelvitConfig = field(default_factory=RelvitConfig)
    ce_weight: float = 1.0  # weight of the labelled CE; 0 = self-supervised stage (no CE, no labels used)


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"  # the run writes to out_dir/name
    seed: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "auto"] = "auto"  # bf16 = autocast; auto = bf16 where native (raylg.precision)
    log_every: int = 50  # steps between host reads of the loss terms and the NaN check (and its rollback point)
    # the task's training forward through torch.compile (raylg.compiled): compiled once before the first
    # epoch, its time reported apart (compile_time_s); pays off once a run has more steps than it takes to win back
    compile: bool = False
    resume: bool = False  # continue from out_dir/name/checkpoints/last
    # start the student from other weights (e.g. an SSL stage): a run dir (its checkpoints/last), a
    # checkpoint dir, or a .safetensors of the student alone; "" = fresh init
    init_from: str = ""
    max_train_batches: int = 0  # 0 = full epochs; N = cap for smoke runs and benchmarks
    progress: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ---------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return value converted to tp, or raise ConfigError naming key."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"{key}: unsupported config type {tp!r}")


def _unknown(key: str, name: str, known) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    hint = f"; did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} (valid: {', '.join(sorted(known))})")


def from_dict(cls, data: dict[str, Any], prefix: str = ""):
    """Build dataclass cls from a nested dict, checking every key and type."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise _unknown(key, name, hints)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{key}.")
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(cfg) -> dict[str, Any]:
    """Nested config -> {"optim.lr": 5e-4, ...}. Dict-typed fields stay whole leaves."""
    out: dict[str, Any] = {}

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = v if not isinstance(v, (list, dict)) else _copy(v)

    walk(cfg, "")
    return out


def _copy(v):
    return yaml.safe_load(yaml.safe_dump(v))


def unflatten(flat: dict[str, Any], cls=Config):
    """{"optim.lr": ...} -> Config, with the same checks as from_dict."""
    return apply_overrides(cls(), flat)


def _set_path(nested: dict, cls, key: str, value: Any) -> None:
    parts = key.split(".")
    node, tp, done = nested, cls, []
    for i, part in enumerate(parts):
        hints = _hints(tp)
        path = ".".join(done + [part])
        if part not in hints:
            raise _unknown(path, part, hints)
        done.append(part)
        sub = hints[part]
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(sub):
            if last:
                raise ConfigError(f"{path} is a section; set one of its fields ({', '.join(_hints(sub))})")
            node = node.setdefault(part, {})
            tp = sub
        elif not last:
            if typing.get_origin(sub) is dict:  # model.kwargs.depth=4
                node.setdefault(part, {})[".".join(parts[i + 1 :])] = value
                return
            raise _unknown(key, ".".join(parts[i + 1 :]), [])
        else:
            node[part] = value


def apply_overrides(cfg, overrides: dict[str, Any]):
    """Return a new config with dotted-key overrides applied and checked."""
    nested = to_dict(cfg)
    for key, value in overrides.items():
        _set_path(nested, type(cfg), key, value)
    out = from_dict(type(cfg), nested)
    validate(out)
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """["optim.lr=1e-3", "model.kwargs.depth=4"] -> {"optim.lr": 0.001, ...} (values as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict; a top-level `base: other.yaml` (relative to the file) is merged under it."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    if base_path in _seen:
        raise ConfigError(f"config file {str(path)!r}: 'base' includes itself through {str(base_path)!r}")
    return _merge(read_yaml(base_path, _seen + (base_path,)), data)


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None, cls=Config):
    """Load a YAML config file (or the defaults), apply overrides, validate."""
    if path is not None:
        p = Path(path)
        data = read_yaml(p)
        try:
            cfg = from_dict(cls, data)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    else:
        cfg = cls()
    return apply_overrides(cfg, overrides or {})


def dump(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save(cfg, path: str | Path) -> None:
    """Write the resolved config atomically (temporary name, then rename)."""
    from raylg.files import write_text_atomic

    write_text_atomic(path, dump(cfg))


def diff(a, b, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """{key: (a_value, b_value)} for every flat key whose values differ."""
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if k not in ignore and fa.get(k) != fb.get(k)}


# ---------------------------------------------------------------------------------------
# range checks


def _check(cond: bool, key: str, value: Any, want: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {value!r} is out of range ({want})")


def validate(cfg: Config) -> None:
    """Range checks that need no registry. Raises ConfigError naming the field."""
    if not isinstance(cfg, Config):
        return
    d, o, s, g, t, r = cfg.data, cfg.optim, cfg.schedule, cfg.guidance.locality, cfg.teacher, cfg.run
    _check(d.img_size >= 8, "data.img_size", d.img_size, ">= 8")
    _check(d.per_class >= 0, "data.per_class", d.per_class, ">= 0; 0 = all images")
    _check(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "between 0 and 1, exclusive")
    _check(0.0 <= d.test_fraction < 1.0, "data.test_fraction", d.test_fraction, "in [0, 1); 0 = no carved test split")
    _check(0.0 < d.scale_min <= 1.0, "data.scale_min", d.scale_min, "in (0, 1]")
    _check(0.0 <= d.hflip <= 1.0, "data.hflip", d.hflip, "in [0, 1]")
    _check(0.0 <= d.re_prob <= 1.0, "data.re_prob", d.re_prob, "in [0, 1]")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0")
    _check(d.eval_batch_size >= 1, "data.eval_batch_size", d.eval_batch_size, ">= 1")
    _check(math.isfinite(d.device_budget_mib) and d.device_budget_mib >= 0, "data.device_budget_mib", d.device_budget_mib,
           ">= 0; 0 = a quarter of the free device memory")
    _check(0.0 <= cfg.model.drop_path < 1.0, "model.drop_path", cfg.model.drop_path, "in [0, 1)")
    _check(math.isfinite(o.lr) and o.lr > 0, "optim.lr", o.lr, "> 0")
    _check(o.batch_size >= 1, "optim.batch_size", o.batch_size, ">= 1")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "two values in [0, 1)")
    _check(o.clip_grad >= 0, "optim.clip_grad", o.clip_grad, ">= 0; 0 = off")
    _check(s.epochs >= 1, "schedule.epochs", s.epochs, ">= 1")
    _check(0 <= s.warmup_epochs < s.epochs or s.warmup_epochs == 0, "schedule.warmup_epochs", s.warmup_epochs,
           f"in [0, schedule.epochs={s.epochs})")
    _check(s.warmup_lr >= 0, "schedule.warmup_lr", s.warmup_lr, ">= 0")
    _check(0 <= s.min_lr <= o.lr, "schedule.min_lr", s.min_lr, f"in [0, optim.lr={o.lr}]")
    _check(math.isfinite(g.beta) and g.beta >= 0, "guidance.locality.beta", g.beta, ">= 0 and finite")
    _check(t.img_size >= 8, "teacher.img_size", t.img_size, ">= 8")
    if t.path:
        _check(t.img_size <= d.img_size, "teacher.img_size", t.img_size,
               f"<= data.img_size={d.img_size}: the teacher sees the student's image downsampled")
    if g.student_blocks:
        _check(len(g.student_blocks) == len(g.teacher_stages), "guidance.locality.student_blocks", g.student_blocks,
               f"one block per teacher stage; teacher_stages has {len(g.teacher_stages)}")
    _check(len(set(g.teacher_stages)) == len(g.teacher_stages), "guidance.locality.teacher_stages", g.teacher_stages,
           "distinct stages")
    if g.source == "shards":
        _check(bool(g.shards), "guidance.locality.shards", g.shards, "a manifest path or s3:// URI when source is shards")
    _check(r.max_train_batches >= 0, "run.max_train_batches", r.max_train_batches, ">= 0")
    _check(r.log_every >= 1, "run.log_every", r.log_every, ">= 1")
    _check(bool(r.name) and "/" not in r.name, "run.name", r.name, "a non-empty name without '/'")
    _validate_terms(cfg)


def _validate_terms(cfg: Config) -> None:
    gd = cfg.guidance
    for key, w in (("drloc", gd.drloc.weight), ("distill_token", gd.distill_token.weight), ("kd", gd.kd.weight)):
        _check(math.isfinite(w) and w >= 0, f"guidance.{key}.weight", w, ">= 0 and finite; 0 = off")
    _check(gd.drloc.m >= 1, "guidance.drloc.m", gd.drloc.m, ">= 1 token pairs per image")
    _check(math.isfinite(gd.kd.tau) and gd.kd.tau > 0, "guidance.kd.tau", gd.kd.tau, "> 0 and finite")
    rv = gd.relvit
    for key in ("weight", "relations", "positions", "distances"):
        w = getattr(rv, key)
        _check(math.isfinite(w) and w >= 0, f"guidance.relvit.{key}", w, ">= 0 and finite; 0 = off")
    if rv.weight > 0 and not (rv.relations > 0 or rv.positions > 0 or rv.distances > 0):
        raise ConfigError(f"guidance.relvit.weight is {rv.weight} but every RelViT task is off (relations, positions "
                          f"and distances are 0); set one of them > 0, or weight 0")
    if rv.weight > 0 and rv.shuffle and gd.ce_weight > 0:
        raise ConfigError(f"guidance.relvit.shuffle is true but guidance.ce_weight is {gd.ce_weight}: the classifier "
                          f"would learn on shuffled images and be evaluated on whole ones; shuffle only in the "
                          f"self-supervised stage (ce_weight 0)")
    if rv.weight > 0 and rv.shuffle and gd.locality.source == "shards":
        raise ConfigError("guidance.relvit.shuffle is true but guidance.locality.source is 'shards': precomputed "
                          "teacher maps cannot follow the shuffled patches; use source 'online'")
    _check(math.isfinite(gd.ce_weight) and gd.ce_weight >= 0, "guidance.ce_weight", gd.ce_weight,
           ">= 0 and finite; 0 = no CE (self-supervised stage)")
    # a missing teacher is caught when the task is built (raylg.task.build_task), not here: a sweep's
    # base config gets teacher.path only once the sweep has trained or found its teacher
    for key, w in (("distill_token", gd.distill_token.weight), ("kd", gd.kd.weight)):
        if w > 0 and gd.locality.source == "shards":
            raise ConfigError(f"guidance.{key}.weight is {w} but guidance.locality.source is 'shards': feature "
                              f"shards hold the teacher's stage maps, not its logits; use source 'online'")
