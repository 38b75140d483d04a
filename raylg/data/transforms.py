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

The train transform is a ``GeometryCompose``: called, it returns the image tensor like any
Compose; ``with_geometry(img)`` also returns where the output came from (the crop box in
fractions of the source image and whether it was flipped), drawing the same random numbers.
Precomputed teacher features replay that crop and flip on the teacher's maps.
"""

from __future__ import annotations

import random

import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import functional as TF

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


class GeometryCompose(T.Compose):
    """A Compose that can also say which box of the source image (fractions [y0, x0, y1, x1])
    it cropped and resized to its output, and whether it flipped it horizontally.

    Geometric steps it tracks: random-resized crops (timm's and torchvision's), Resize,
    CenterCrop, horizontal flips. Every other step (colour, RandAugment, erasing, tensor
    ops) is image-only by rule; a geometric step it cannot track is refused when asked.
    """

    UNTRACKED = (T.RandomVerticalFlip, T.RandomCrop, T.RandomRotation, T.RandomAffine, T.RandomPerspective)

    def with_geometry(self, img) -> tuple[torch.Tensor, dict]:
        from timm.data.transforms import RandomResizedCropAndInterpolation

        box, flip = [0.0, 0.0, 1.0, 1.0], False
        for t in self.transforms:
            if isinstance(t, (RandomResizedCropAndInterpolation, T.RandomResizedCrop)):
                w0, h0 = TF.get_image_size(img)
                i, j, h, w = t.get_params(img, t.scale, t.ratio)
                interp = random.choice(t.interpolation) if isinstance(t.interpolation, (list, tuple)) else t.interpolation
                img = TF.resized_crop(img, i, j, h, w, t.size, interp)
                box = _sub_box(box, flip, i / h0, j / w0, (i + h) / h0, (j + w) / w0)
            elif isinstance(t, T.CenterCrop):
                w0, h0 = TF.get_image_size(img)
                ch, cw = t.size
                if ch > h0 or cw > w0:
                    raise DataError(f"CenterCrop {t.size} of a {h0}x{w0} image pads; its geometry cannot be replayed")
                top, left = int(round((h0 - ch) / 2.0)), int(round((w0 - cw) / 2.0))
                img = t(img)
                box = _sub_box(box, flip, top / h0, left / w0, (top + ch) / h0, (left + cw) / w0)
            elif isinstance(t, T.RandomHorizontalFlip):
                if torch.rand(1) < t.p:  # what RandomHorizontalFlip.forward draws
                    img, flip = TF.hflip(img), not flip
            elif isinstance(t, self.UNTRACKED):
                raise DataError(f"{type(t).__name__} moves pixels and its geometry is not recorded; "
                                "teacher-feature replay supports random-resized crops and horizontal flips")
            else:  # Resize keeps fractional coordinates; colour/RandAugment/erasing touch the image only
                img = t(img)
        return img, {"crop": torch.tensor(box, dtype=torch.float32), "flip": flip}


def _sub_box(box: list[float], flip: bool, fy0: float, fx0: float, fy1: float, fx1: float) -> list[float]:
    """Crop [fy0, fx0, fy1, fx1] (fractions of the current image) of an image that shows source
    box ``box``, mirrored when ``flip``: the new source box."""
    y0, x0, y1, x1 = box
    bh, bw = y1 - y0, x1 - x0
    if flip:
        fx0, fx1 = 1.0 - fx1, 1.0 - fx0
    return [y0 + fy0 * bh, x0 + fx0 * bw, y0 + fy1 * bh, x0 + fx1 * bw]


def clean_transform(img_size: int, mean, std, interpolation: str = "bicubic"):
    """The whole source image squashed to img_size x img_size (no crop, no flip), normalised:
    what precomputed teacher features see. Its maps cover the source's fractional coordinates,
    so any recorded crop box maps onto them directly."""
    check_stats(mean, std, len(mean))
    return T.Compose([
        T.Resize((img_size, img_size), interpolation=T.InterpolationMode(interpolation)),
        T.ToTensor(),
        T.Normalize(mean=list(mean), std=list(std)),
    ])


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
        return GeometryCompose(eval_transform(cfg.img_size, mean, std, cfg.interpolation).transforms)
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
    return GeometryCompose(t.transforms)
