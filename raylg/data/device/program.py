"""The loader's train transform read step by step into a device program (what to draw, what to apply);
Unsupported names the first step or option the device path does not implement."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import Unsupported

# ---------------------------------------------------------------------------------------
# the program: the loader's transform, read step by step


@dataclass
class Stage:
    """One per-sample choice among ops (a RandAugment layer, a ColorJitter slot)."""

    kind: str  # "randaug" | "jitter"
    index: int


@dataclass
class RandAugmentSpec:
    names: list[str]
    probs: np.ndarray
    magnitudes: np.ndarray
    mstds: np.ndarray
    mmaxes: np.ndarray
    translate_const: float
    translate_pct: float
    num_layers: int
    weights: np.ndarray | None
    fill: tuple[float, ...]
    interpolation: str  # "bicubic" | "bilinear" (geometric ops)


@dataclass
class Program:
    size: tuple[int, int]  # output (h, w)
    geometry: str  # "rrc" | "resize"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    resize: Any = None  # "resize": Resize's size (int: shorter side, or (h, w)); the crop is `size`, centred
    hflip: float = 0.0
    randaug: RandAugmentSpec | None = None
    jitter: dict[str, tuple[float, float]] = field(default_factory=dict)  # brightness/contrast/saturation ranges
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 1 / 3)
    erase_log_aspect: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3))

    def describe(self) -> dict:
        ra = None
        if self.randaug is not None:
            r = self.randaug
            ra = {"ops": r.names, "num_layers": r.num_layers, "prob": float(r.probs[0]), "magnitude": float(r.magnitudes[0]),
                  "mstd": float(r.mstds[0]), "weighted": r.weights is not None}
        return {"size": list(self.size), "geometry": self.geometry, "scale": list(self.scale), "ratio": list(self.ratio),
                "interpolation": self.interpolation, "hflip": self.hflip, "randaugment": ra,
                "color_jitter": {k: list(v) for k, v in self.jitter.items()}, "erase_prob": self.erase_prob}


INTERP = {"bicubic", "bilinear"}
BLEND_OPS = {"Color": "color", "ColorIncreasing": "color", "Contrast": "contrast", "ContrastIncreasing": "contrast",
             "Brightness": "brightness", "BrightnessIncreasing": "brightness", "Sharpness": "sharpness",
             "SharpnessIncreasing": "sharpness"}
GEOMETRIC_OPS = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}
POINT_OPS = {"AutoContrast": "autocontrast", "Equalize": "equalize", "Invert": "invert", "Posterize": "posterize",
             "PosterizeIncreasing": "posterize", "PosterizeOriginal": "posterize", "Solarize": "solarize",
             "SolarizeIncreasing": "solarize", "SolarizeAdd": "solarize_add"}
RA_OPS = set(BLEND_OPS) | GEOMETRIC_OPS | set(POINT_OPS)
# op kinds on the device; 0 = nothing
KINDS = ["none", "warp", "autocontrast", "equalize", "invert", "posterize", "solarize", "solarize_add",
         "color", "contrast", "brightness", "sharpness"]
KIND = {k: i for i, k in enumerate(KINDS)}


def _interp_name(mode) -> str:
    name = getattr(mode, "value", None) or str(mode)
    name = {2: "bilinear", 3: "bicubic"}.get(mode, name) if isinstance(mode, int) else name  # PIL enums
    name = name.lower().replace("interpolationmode.", "").replace("resampling.", "")
    if name not in INTERP:
        raise Unsupported(f"interpolation {mode!r} (the device pipeline resamples bicubic or bilinear)")
    return name


def _randaug(t) -> RandAugmentSpec:
    ops = list(t.ops)
    names = [op.name for op in ops]
    bad = [n for n in names if n not in RA_OPS]
    if bad:
        raise Unsupported(f"RandAugment op(s) {', '.join(bad)}")
    stds = []
    for op in ops:
        s = float(op.magnitude_std)
        stds.append(s)
    resample = {(_interp_name(op.kwargs["resample"]) if not isinstance(op.kwargs["resample"], (list, tuple)) else None)
                for op in ops}
    if None in resample:
        raise Unsupported("RandAugment with random interpolation (a bilinear/bicubic choice per op)")
    fills = {tuple(op.kwargs.get("fillcolor") or (128, 128, 128)) for op in ops}
    hp = ops[0].hparams
    weights = None if t.choice_weights is None else np.asarray(t.choice_weights, dtype=np.float64)
    return RandAugmentSpec(
        names=names, probs=np.array([op.prob for op in ops], dtype=np.float64),
        magnitudes=np.array([op.magnitude for op in ops], dtype=np.float64), mstds=np.array(stds, dtype=np.float64),
        mmaxes=np.array([op.magnitude_max or 10.0 for op in ops], dtype=np.float64),
        translate_const=float(hp.get("translate_const", 250)), translate_pct=float(hp.get("translate_pct", 0.45)),
        num_layers=int(t.num_layers), weights=weights, fill=tuple(float(v) for v in sorted(fills)[0]),
        interpolation=sorted(resample)[0])


def compile_transform(transform, in_chans: int) -> Program:
    """The device program for a loader train transform (raylg's GeometryCompose of timm's steps).
    Raises Unsupported naming the first step (or option) the device path does not implement."""
    from timm.data.auto_augment import AugMixAugment, AutoAugment, RandAugment
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", [transform]))
    prog: Program | None = None
    normalized = tensor = False
    for t in steps:
        name = type(t).__name__
        if isinstance(t, (RandomResizedCropAndInterpolation, T.RandomResizedCrop)):
            if prog is not None:
                raise Unsupported(f"{name} after another geometric step")
            interp = t.interpolation
            if isinstance(interp, (list, tuple)):
                raise Unsupported(f"{name} with random interpolation")
            size = tuple(t.size) if isinstance(t.size, (list, tuple)) else (t.size, t.size)
            prog = Program(size=(int(size[0]), int(size[-1])), geometry="rrc", scale=tuple(map(float, t.scale)),
                           ratio=tuple(map(float, t.ratio)), interpolation=_interp_name(interp))
        elif isinstance(t, T.Resize) and prog is None:
            if t.max_size is not None:
                raise Unsupported("Resize with max_size")
            size = t.size if isinstance(t.size, int) or len(t.size) != 1 else t.size[0]
            if isinstance(size, int):
                out = (size, size)
            else:
                out = (int(size[0]), int(size[1]))
            prog = Program(size=out, geometry="resize", resize=size, interpolation=_interp_name(t.interpolation))
        elif isinstance(t, T.CenterCrop) and prog is not None and prog.geometry == "resize":
            prog.size = (int(t.size[0]), int(t.size[1]))
        elif prog is None:
            raise Unsupported(f"{name} before the crop (the device pipeline starts with a random-resized crop or a resize)")
        elif isinstance(t, T.RandomHorizontalFlip):
            prog.hflip = float(t.p)
        elif isinstance(t, RandAugment):
            if prog.randaug is not None or prog.jitter or tensor:
                raise Unsupported(f"{name} in this position")
            prog.randaug = _randaug(t)
        elif isinstance(t, (AutoAugment, AugMixAugment)):
            raise Unsupported(f"{name} (timm's AutoAugment/AugMix policies; the device pipeline implements RandAugment, "
                              "data.auto_augment 'rand-...')")
        elif isinstance(t, T.ColorJitter):
            if t.hue is not None:
                raise Unsupported("ColorJitter hue")
            for key in ("brightness", "contrast", "saturation"):
                r = getattr(t, key)
                if r is not None and tuple(r) != (1.0, 1.0):
                    prog.jitter[key] = (float(r[0]), float(r[1]))
        elif isinstance(t, (MaybeToTensor, T.ToTensor)):
            tensor = True
        elif isinstance(t, T.Normalize):
            if not tensor or normalized:
                raise Unsupported("Normalize before ToTensor")
            prog.mean = tuple(float(m) for m in torch.as_tensor(t.mean).flatten().tolist())
            prog.std = tuple(float(s) for s in torch.as_tensor(t.std).flatten().tolist())
            normalized = True
        elif isinstance(t, RandomErasing):
            if not normalized:
                raise Unsupported("RandomErasing before Normalize")
            if t.mode not in ("const", ""):
                raise Unsupported(f"RandomErasing mode {t.mode!r} (the device pipeline erases with 'const', zeros)")
            if t.max_count != 1 or t.min_count != 1 or t.num_splits > 1:
                raise Unsupported("RandomErasing with more than one box or batch splits")
            prog.erase_prob = float(t.probability)
            prog.erase_area = (float(t.min_area), float(t.max_area))
            prog.erase_log_aspect = tuple(float(v) for v in t.log_aspect_ratio)
        else:
            raise Unsupported(name)
    if prog is None or not normalized:
        raise Unsupported("a transform without a crop/resize, ToTensor and Normalize")
    if len(prog.mean) == 1 and in_chans > 1:
        prog.mean, prog.std = prog.mean * in_chans, prog.std * in_chans
    if prog.randaug is not None and len(prog.randaug.fill) != in_chans:
        fill = prog.randaug.fill
        prog.randaug.fill = (fill + fill * in_chans)[:in_chans] if len(fill) < in_chans else fill[:in_chans]
    return prog


def unsupported(transform, in_chans: int) -> str | None:
    """What the device pipeline does not implement in this transform (None: it implements it all)."""
    try:
        compile_transform(transform, in_chans)
    except Unsupported as e:
        return e.what
    return None


def unsupported_config(data_cfg, in_chans: int = 3) -> str | None:
    """What the device pipeline would not implement for this DataConfig, from the config alone (no
    data read): for a preflight before any worker starts. None when data.pipeline is not 'device'
    or everything is implemented."""
    from ..transforms import train_transform

    if getattr(data_cfg, "pipeline", "loader") != "device":
        return None
    return unsupported(train_transform(data_cfg, (0.5,) * in_chans, (0.25,) * in_chans, in_chans), in_chans)


