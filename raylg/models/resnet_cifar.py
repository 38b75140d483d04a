"""CIFAR-style ResNets, the locality-guidance teachers, registered in timm's registry.

He et al. (2016) CIFAR layout: a 3x3 stem conv (stride 1, no max-pool) + BN + ReLU, then
stages of BasicBlocks (3x3 conv-BN-ReLU, 3x3 conv-BN, add shortcut, ReLU), global average
pool and a linear head. Shortcuts are **option B**: identity where shape is kept, a 1x1
conv (stride 2) + BN where a stage changes width or resolution. That is what the LG
reference code's pycls ResNet does (its ResBlock projects when w_in != w_out or stride != 1).

- ``resnet56_cifar``: 3 stages x 9 blocks, 16/32/64 channels, strides 1/2/2. The paper's
  teacher: 0.86M parameters at 100 classes (He et al. report 0.85M for 10 classes with
  option-A shortcuts; option B adds 2,752 parameters).
- ``resnet20_cifar``: 3 stages x 3 blocks, same widths (0.28M), for the tiny CPU preset.
- ``resnet18_cifar``: 4 stages x 2 blocks, 64/128/256/512 channels, strides 1/2/2/2,
  3x3 stem (the usual CIFAR ResNet-18, 11.2M), another teacher choice.

Guidance features are the stage outputs: ``forward_stages(x)`` gives 16x32x32, 32x16x16 and
64x8x8 maps for a 32px input to resnet56_cifar (four maps for resnet18_cifar).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .builder import TimmStyle, build, default_cfg
from .errors import ModelError


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.shortcut = nn.Identity()
        if stride != 1 or in_chs != out_chs:  # option B: 1x1 projection
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNetCifar(TimmStyle):
    """A CIFAR ResNet of BasicBlocks; ``stage_depths[i]`` blocks of ``widths[i]`` channels."""

    def __init__(
        self,
        stage_depths: Sequence[int] = (9, 9, 9),
        widths: Sequence[int] = (16, 32, 64),
        strides: Sequence[int] = (1, 2, 2),
        in_chans: int = 3,
        num_classes: int = 10,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if not len(stage_depths) == len(widths) == len(strides):
            raise ModelError(f"stage_depths {stage_depths}, widths {widths} and strides {strides} must have one entry per stage")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages, prev, reduction = [], widths[0], 1
        self.feature_info = []
        for i, (depth, width, stride) in enumerate(zip(stage_depths, widths, strides)):
            blocks = [BasicBlock(prev if j == 0 else width, width, stride if j == 0 else 1) for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            prev, reduction = width, reduction * stride
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    @property
    def stage_channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def _stage_indices(self, indices: Optional[Union[int, Sequence[int]]]) -> list[int]:
        n = len(self.stages)
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):  # timm convention: the last n stages
            if not 0 < indices <= n:
                raise ModelError(f"last-n stages {indices} is out of range (1..{n})")
            return list(range(n - indices, n))
        out = []
        for i in indices:
            if not -n <= i < n:
                raise ModelError(f"teacher stage {i} is out of range; it has {n} stages (valid: 0..{n - 1})")
            out.append(i % n)
        return out

    def _intermediates(self, x, indices, norm, stop_early, output_fmt):
        """Stage outputs (index i = output of stage i; the stem is not indexed), in stage order,
        and the final map. ``norm`` is accepted for timm compatibility; these stage outputs have no extra norm."""
        if output_fmt != "NCHW":
            raise ModelError(f"output_fmt {output_fmt!r}: a CNN teacher returns NCHW maps only")
        take = set(self._stage_indices(indices))
        last = max(take, default=-1)
        maps = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if stop_early and i > last:
                break
            x = stage(x)
            if i in take:
                maps.append(x)
        return x, maps

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return x  # no final norm

    def forward_stages(self, x: torch.Tensor, with_logits: bool = False):
        """Every stage's output map (the guidance features), in stage order; with_logits=True
        returns (maps, logits) from the same pass."""
        final, maps = self.forward_intermediates(x)
        return (maps, self.forward_head(final)) if with_logits else maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.head(x)


def _cfg(**kwargs):
    return default_cfg(**{
        "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762), "first_conv": "stem.0", **kwargs,
    })


default_cfgs = generate_default_cfgs({
    "resnet56_cifar": _cfg(),
    "resnet20_cifar": _cfg(),
    "resnet18_cifar": _cfg(pool_size=(4, 4)),
})


def _create(variant: str, pretrained: bool, defaults: dict, kwargs: dict) -> ResNetCifar:
    return build(ResNetCifar, variant, pretrained, defaults, kwargs, no_weights="train it with jobs/train_teacher.py")


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """ResNet-56 for 32x32 input: 3 x 9 BasicBlocks, 16/32/64 channels (the LG teacher)."""
    return _create("resnet56_cifar", pretrained, dict(stage_depths=(9, 9, 9)), kwargs)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """ResNet-20 for 32x32 input: 3 x 3 BasicBlocks, 16/32/64 channels (tiny CPU preset)."""
    return _create("resnet20_cifar", pretrained, dict(stage_depths=(3, 3, 3)), kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """ResNet-18 for 32x32 input: 3x3 stem, 4 x 2 BasicBlocks, 64/128/256/512 channels."""
    defaults = dict(stage_depths=(2, 2, 2, 2), widths=(64, 128, 256, 512), strides=(1, 2, 2, 2))
    return _create("resnet18_cifar", pretrained, defaults, kwargs)
