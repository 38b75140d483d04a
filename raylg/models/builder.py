"""What raylg's own timm-style models share, written once.

- ``init_weights``: truncated-normal Linear weights (std 0.02, zero bias), LayerNorm at 1/0;
  ``conv=True`` adds Kaiming-normal convs (CCT), ``batchnorm=True`` BatchNorm at 1/0 (CvT).
- ``default_cfg``: the timm pretrained-cfg dict of a model without weights (ImageNet mean/std,
  224 px, bicubic, crop 0.9 unless given).
- ``build``: the no-weights guard and ``build_model_with_cfg``; every ``@register_model``
  entry point of raylg calls it.
- ``TimmStyle``: classifier access, the token/avg head, ``forward_intermediates`` (timm's
  signature; the walk is each class's ``_intermediates``) and ``forward``; ``BlockSequence``
  (CCT, T2T-ViT: one flat run of blocks after an embedding) and ``FlatStages`` (PVT v1, CvT:
  stages of blocks numbered flat across stages) add that walk and ``forward_features``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from torch import nn

from .errors import ModelError

FROM_SCRATCH = "raylg trains from scratch (pretrained=False)"


def init_weights(m: nn.Module, *, conv: bool = False, batchnorm: bool = False) -> None:
    """For ``model.apply(...)`` (``functools.partial`` for the options); other modules keep PyTorch's init."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) or (batchnorm and isinstance(m, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif conv and isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)


def default_cfg(**kwargs) -> dict:
    """timm's pretrained cfg for a model with no weights; kwargs override any field."""
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0", **kwargs,
    }


def build(cls, variant: str, pretrained: bool, defaults: dict, kwargs: dict, *, no_weights: str = FROM_SCRATCH):
    """cls built as timm builds its models, kwargs over defaults; ModelError if weights are asked for."""
    if pretrained:
        raise ModelError(f"{variant} has no pretrained weights; {no_weights}")
    return build_model_with_cfg(cls, variant, pretrained=False, **dict(defaults, **kwargs))


def check_output_fmt(output_fmt: str) -> None:
    if output_fmt not in ("NCHW", "NLC"):
        raise ModelError(f"output_fmt {output_fmt!r}: use 'NCHW' or 'NLC'")


class TimmStyle(nn.Module):
    """timm's classifier interface over ``self.head`` (width ``self.num_features``) and a head that
    reads the class token (``global_pool='token'``) or averages the patch tokens ('avg')."""

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's feature interface: the outputs of the chosen layers (see each class's
        ``_intermediates``). Returns the list (intermediates_only) or (forward_features output, list)."""
        x, intermediates = self._intermediates(x, indices, norm, stop_early, output_fmt)
        return intermediates if intermediates_only else (self._final(x), intermediates)

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output as forward_features returns it: after the final norm."""
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class BlockSequence(TimmStyle):
    """``self._embed(x) -> (tokens, (H, W))``, then ``self.blocks`` (nn.Sequential) and ``self.norm``."""

    def _intermediates(self, x, indices, norm, stop_early, output_fmt):
        """Outputs of the chosen blocks (int = last n, None = all), patch tokens only, before the
        final norm unless ``norm``; NCHW maps or NLC tokens."""
        check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, (H, W) = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take_indices:
                y = (self.norm(x) if norm else x)[:, self.num_prefix_tokens :]
                intermediates.append(y.transpose(1, 2).reshape(x.shape[0], -1, H, W) if output_fmt == "NCHW" else y)
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self._embed(x)[0]))


class FlatStages(TimmStyle):
    """``self.stages``, each with ``embed(x) -> (tokens, feat_size)``, ``blocks`` (called as
    ``block(x, feat_size)``), ``to_map`` and ``num_prefix_tokens``; ``self.norm`` after the last.
    ``self.feature_info`` has one entry per block, numbered flat across stages."""

    def _intermediates(self, x, indices, norm, stop_early, output_fmt):
        """Over blocks numbered flat across stages (int = last n, None = all): each chosen block's
        output, patch tokens only, before any norm (``norm`` applies the final norm to last-stage
        blocks, the only ones of its width); NCHW maps or NLC tokens."""
        check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates, flat, last = [], 0, self.stages[-1]
        for stage in self.stages:
            if stop_early and flat > max_index:
                break
            x, feat_size = stage.embed(x)
            for block in stage.blocks:
                x = block(x, feat_size)
                if flat in take_indices:
                    y = self.norm(x) if norm and stage is last else x
                    intermediates.append(stage.to_map(y, feat_size) if output_fmt == "NCHW" else y[:, stage.num_prefix_tokens :])
                flat += 1
            if stage is not last:
                x = stage.to_map(x, feat_size)
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token of the last stage after the final norm: B x (prefix + hw) x C, the class token first."""
        for stage in self.stages:
            x, feat_size = stage.embed(x)
            for block in stage.blocks:
                x = block(x, feat_size)
            if stage is not self.stages[-1]:
                x = stage.to_map(x, feat_size)
        return self.norm(x)
