"""Train and eval transforms (timm / torchvision), for 1- or 3-channel PIL images.

Train: timm's create_transform (RandomResizedCrop, flip, RandAugment, random erasing) when
data.augment, else the eval transform. Eval: resize the shorter side to img_size and
center-crop img_size (a plain resize for square images; no crop_pct shrink), ToTensor,
normalise.

Two fixes over stock timm 1.0.x:
- RandAugment's PosterizeIncreasing reaches 0 bits at magnitude 10 (m9 + mstd noise hits it).
  PIL < 12 turned that into a black image; Pillow 12+ raises ValueError, which would crash
  a training run at random. ``safe_posterize`` restores the old behaviour.
- RandAugment fills rotated/sheared borders with the mean as an N-tuple; N must equal the
  image's channels (PIL refuses a 3-tuple for an 'L' image), so mean/std are checked here.
"""

from __future__ import annotations

from PIL import Image, ImageOps
from torchvision import transforms as T

from .errors import DataError


def safe_posterize(img: Image.Image, bits_to_keep: int, **__) -> Image.Image:
    """timm's posterize with PIL's old meaning of bits <= 0: every pixel becomes 0."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform) -> None:
    from timm.data.auto_augment import AugmentOp

    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if isinstance(op, AugmentOp) and op.name.startswith("Posterize"):
                op.aug_fn = safe_posterize


def check_stats(mean, std, in_chans: int) -> None:
    if len(mean) != in_chans or len(std) != in_chans:
        raise DataError(f"mean {tuple(mean)} / std {tuple(std)} must have one value per channel ({in_chans})")
    if any(s <= 0 for s in std):
        raise DataError(f"std {tuple(std)} must be positive")


def eval_transform(img_size: int, mean, std, interpolation: str = "bicubic"):
    check_stats(mean, std, len(mean))
    interp = T.InterpolationMode(interpolation)
    return T.Compose([
        T.Resize(img_size, interpolation=interp),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(mean=list(mean), std=list(std)),
    ])


def train_transform(cfg, mean, std, in_chans: int):
    """The training transform for DataConfig ``cfg`` (eval transform when cfg.augment is false)."""
    from timm.data import create_transform

    check_stats(mean, std, in_chans)
    if not cfg.augment:
        return eval_transform(cfg.img_size, mean, std, cfg.interpolation)
    t = create_transform(
        input_size=(in_chans, cfg.img_size, cfg.img_size),
        is_training=True,
        scale=(cfg.scale_min, 1.0),
        hflip=cfg.hflip,
        auto_augment=cfg.auto_augment or None,
        re_prob=cfg.re_prob,
        interpolation=cfg.interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )
    _patch_posterize(t)
    return t
