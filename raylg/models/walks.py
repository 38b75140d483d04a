"""Block walks for the student families raylg supports; one ``register_family`` per class.

- Plain ViTs (timm ``VisionTransformer`` incl. DeiT and raylg's patch-4 variants, and
  ``ConVit``): timm's own ``forward_intermediates(norm=False, output_fmt='NCHW')`` already
  returns block outputs before the final norm with class/distillation tokens dropped.
- Hierarchical ViTs (PiT, PVTv2): timm's ``forward_intermediates`` is per stage, so these
  walks step through stages and blocks explicitly, mirroring the model's own
  ``forward_features`` line by line, and collect flat block indices (PiT-Ti: 2+6+4 blocks,
  PVTv2-b0: 2+2+2+2). No forward hooks: they break under DDP, compile and checkpointing.
- raylg's own students (T2T-ViT, PVT v1, CCT, CvT) number ``forward_intermediates`` by flat
  block (PVT v1: 2+2+2+2, CvT-13: 1+2+10), so they take timm's walk; their per-block
  ``feature_info`` gives widths and the total stride an image size must divide by (CvT's
  padded conv embeddings take any size that leaves every stage a token: the model says).

Each walk is checked against the model's own forward in tests/test_models.py (raylg's own
students in tests/test_students_extra.py).

Each family also says how to read the final token grid (patch tokens after the final norm,
B x C x h x w) out of ``forward_features``' output, for terms such as DRLoc. PiT has none:
its ``forward_features`` keeps the class (and distillation) tokens only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from timm.models.convit import ConVit
from timm.models.pit import PoolingVisionTransformer
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cct import CCT
from .cvt import CvT
from .families import Family, register_family
from .pvt_v1 import PyramidVisionTransformer
from .t2t_vit import T2TViT

Maps = list[torch.Tensor]


def _square_grid(tokens: torch.Tensor) -> torch.Tensor:
    """B x N x C patch tokens of a square image -> B x C x s x s."""
    B, N, C = tokens.shape
    s = int(round(N ** 0.5))
    if s * s != N:
        raise ValueError(f"{N} patch tokens do not form a square grid")
    return tokens.transpose(1, 2).reshape(B, C, s, s)


def _prefixed_tokens(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """B x (prefix + N) x C after the final norm (ViT, DeiT distilled, ConViT, T2T-ViT, CCT)."""
    return _square_grid(feats[:, getattr(model, "num_prefix_tokens", 0):])


def _patch_grid_error(model: nn.Module, img_size: int) -> Optional[str]:
    ph, pw = model.patch_embed.patch_size
    if img_size % ph or img_size % pw:
        return f"image size {img_size} is not divisible by the patch size {ph}"
    return None


# -- plain ViTs: timm's forward_intermediates -------------------------------------------


def _timm_walk(model: nn.Module, x: torch.Tensor, take: Sequence[int], final: bool):
    if not take:
        return (model.forward_features(x) if final else None), []
    out = model.forward_intermediates(
        x, indices=list(take), norm=False, stop_early=not final, output_fmt="NCHW", intermediates_only=not final
    )
    return out if final else (None, out)


def _vit_channels(model: nn.Module) -> list[int]:
    return [model.embed_dim] * len(model.blocks)


_PLAIN_VIT = dict(walk=_timm_walk, channels=_vit_channels, size_error=_patch_grid_error, tokens=_prefixed_tokens)
register_family(VisionTransformer, Family(name="vit", **_PLAIN_VIT))
register_family(ConVit, Family(name="convit", **_PLAIN_VIT))


# -- PiT: stages of blocks over [prefix tokens; patch tokens], pooling between stages ------


def _pit_walk(model: PoolingVisionTransformer, x: torch.Tensor, take: Sequence[int], final: bool):
    maps: Maps = []
    last = max(take, default=-1)
    x = model.pos_drop(model.patch_embed(x) + model.pos_embed)
    prefix = model.cls_token.expand(x.shape[0], -1, -1)
    n_prefix = prefix.shape[1]
    flat = 0
    for stage in model.transformers:  # timm pit.Transformer.forward, unrolled per block
        if stage.pool is not None:
            x, prefix = stage.pool(x, prefix)
        B, C, H, W = x.shape
        tokens = stage.norm(torch.cat((prefix, x.flatten(2).transpose(1, 2)), dim=1))
        for block in stage.blocks:
            tokens = block(tokens)
            if flat in take:
                maps.append(tokens[:, n_prefix:].transpose(1, 2).reshape(B, C, H, W))
            if not final and flat == last:
                return None, maps
            flat += 1
        prefix, x = tokens[:, :n_prefix], tokens[:, n_prefix:].transpose(1, 2).reshape(B, C, H, W)
    return model.norm(prefix), maps


def _pit_channels(model: PoolingVisionTransformer) -> list[int]:
    return [stage.blocks[0].norm1.normalized_shape[0] for stage in model.transformers for _ in stage.blocks]


def _pit_size_error(model: PoolingVisionTransformer, img_size: int) -> Optional[str]:
    patch, stride = model.patch_embed.patch_size[0], model.patch_embed.conv.stride[0]
    if img_size < patch or (img_size - patch) % stride:
        return (f"image size {img_size} does not fit the patch embedding (patch {patch}, stride {stride}): "
                f"need (size - {patch}) % {stride} == 0")
    return None


register_family(PoolingVisionTransformer, Family(name="pit", walk=_pit_walk, channels=_pit_channels, size_error=_pit_size_error))


# -- PVTv2: stages of blocks over B x HW x C tokens, a norm at the end of every stage -----


def _pvt_v2_walk(model: PyramidVisionTransformerV2, x: torch.Tensor, take: Sequence[int], final: bool):
    maps: Maps = []
    last = max(take, default=-1)
    x = model.patch_embed(x)  # B H W C
    flat = 0
    for stage in model.stages:  # timm pvt_v2.PyramidVisionTransformerStage.forward, unrolled
        if stage.downsample is not None:
            x = stage.downsample(x)  # B C H W -> B H W C
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)
        for block in stage.blocks:
            if stage.grad_checkpointing and not torch.jit.is_scripting():
                tokens = checkpoint(block, tokens, (H, W), use_reentrant=False)
            else:
                tokens = block(tokens, (H, W))
            if flat in take:
                maps.append(tokens.reshape(B, H, W, C).permute(0, 3, 1, 2))
            if not final and flat == last:
                return None, maps
            flat += 1
        x = stage.norm(tokens).reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()
    return x, maps


def _pvt_v2_channels(model: PyramidVisionTransformerV2) -> list[int]:
    return [stage.norm.normalized_shape[0] for stage in model.stages for _ in stage.blocks]


def _map_tokens(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    return feats  # PVTv2: the last stage's normed map, already B x C x h x w


def _any_size(model: nn.Module, img_size: int) -> Optional[str]:
    return None  # overlapping, padded conv embeddings take any input size


register_family(
    PyramidVisionTransformerV2,
    Family(name="pvt_v2", walk=_pvt_v2_walk, channels=_pvt_v2_channels, size_error=_any_size, takes_img_size=False,
           tokens=_map_tokens),
)


# -- raylg's students (T2T-ViT, PVT v1, CCT): flat-block forward_intermediates, feature_info --


def _info_channels(model: nn.Module) -> list[int]:
    return [info["num_chs"] for info in model.feature_info]


def _stride_error(model: nn.Module, img_size: int) -> Optional[str]:
    stride = max(info["reduction"] for info in model.feature_info)
    if img_size % stride:
        return f"image size {img_size} is not divisible by the total stride {stride}"
    return None


def _pvt_v1_tokens(model: PyramidVisionTransformer, feats: torch.Tensor) -> torch.Tensor:
    return _square_grid(feats[:, model.stages[-1].num_prefix_tokens:])  # the class token joins in the last stage


_RAYLG_VIT = dict(walk=_timm_walk, channels=_info_channels, size_error=_stride_error)
register_family(T2TViT, Family(name="t2t_vit", tokens=_prefixed_tokens, **_RAYLG_VIT))
register_family(PyramidVisionTransformer, Family(name="pvt_v1", tokens=_pvt_v1_tokens, **_RAYLG_VIT))
register_family(CCT, Family(name="cct", tokens=_prefixed_tokens, **_RAYLG_VIT))


def _cvt_size_error(model: CvT, img_size: int) -> Optional[str]:
    return model.size_error(img_size)


register_family(CvT, Family(name="cvt", walk=_timm_walk, channels=_info_channels, size_error=_cvt_size_error,
                            tokens=_prefixed_tokens))
