"""PVT v1 (Wang et al., ICCV 2021), written in timm's style and registered with timm.

timm has PVT v2 only. v1 differs from it in three places: non-overlapping patch embeddings
(a stride-p conv + LayerNorm: 4 for the first stage, 2 after), learned absolute position
embeddings per stage, and a plain MLP (no depthwise conv); the class token joins the
sequence at the last stage and the head reads it. The spatial-reduction attention is the
same as v2's, so timm's ``pvt_v2.Attention`` is reused as is.

- ``pvt_tiny``: dims 64/128/320/512, depths 2/2/2/2, heads 1/2/5/8, mlp ratios 8/8/4/4,
  spatial-reduction ratios 8/4/2/1, qkv bias, block norms with eps 1e-6. 13,229,288
  parameters at 224 px / 1000 classes (published 13.2M). Total stride 32: 224 px -> 56, 28,
  14, 7 token grids; 32 px -> 8, 4, 2, 1.

Position embeddings are sized for the ``img_size`` the model is built for and resampled
bilinearly (the class position kept) when an input's grid differs, as the official code
does. Differences from it (whai362/PVT): it decides whether to resample by comparing every
stage's token count with the *first* stage's, so it resamples (to the same size, a no-op)
at every later stage; here each stage compares with its own grid. ``no_weight_decay``
lists the position embeddings beside the class token (raylg's recipe; the official
lists the class token only). ``forward_intermediates`` numbers blocks flat over stages
(0..7 for pvt_tiny), like raylg's layer maps, not by stage as timm's PVTv2 does.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence, Union

import torch
from timm.layers import DropPath, Mlp, PatchEmbed, calculate_drop_path_rates, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.pvt_v2 import Attention
from torch import nn

from .builder import FlatStages, build, default_cfg, init_weights
from .errors import ModelError

__all__ = ["PyramidVisionTransformer", "PvtBlock", "PvtStage"]


class PvtBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PvtStage(nn.Module):
    """Patch embedding (B x C x H x W map -> tokens) + position embedding + blocks."""

    def __init__(self, in_chans: int, dim: int, depth: int, patch_size: int, grid_size: tuple[int, int],
                 num_heads: int, mlp_ratio: float, sr_ratio: int, cls_token: bool = False, qkv_bias: bool = True,
                 pos_drop: float = 0.0, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: Sequence[float] = (), norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        if cls_token and sr_ratio > 1:
            raise ModelError("a PVT stage with the class token needs sr_ratio 1 (the token has no place in the grid)")
        self.grid_size = grid_size
        self.patch_embed = PatchEmbed(
            img_size=tuple(g * patch_size for g in grid_size), patch_size=patch_size, in_chans=in_chans,
            embed_dim=dim, norm_layer=nn.LayerNorm, strict_img_size=False,
        )
        self.num_prefix_tokens = int(cls_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + grid_size[0] * grid_size[1], dim))
        self.pos_drop = nn.Dropout(pos_drop)
        self.blocks = nn.ModuleList([
            PvtBlock(dim, num_heads, mlp_ratio, sr_ratio, qkv_bias, proj_drop, attn_drop, drop_path[i], norm_layer)
            for i in range(depth)
        ])

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.patch_embed.patch_size
        feat_size = (x.shape[-2] // p[0], x.shape[-1] // p[1])
        x = self.patch_embed(x)  # B x HW x C
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        pos = resample_abs_pos_embed(
            self.pos_embed, new_size=feat_size, old_size=self.grid_size, num_prefix_tokens=self.num_prefix_tokens,
            interpolation="bilinear", antialias=False,
        )
        return self.pos_drop(x + pos), feat_size

    def to_map(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        """Patch tokens (prefix dropped) as a B x C x H x W map."""
        return x[:, self.num_prefix_tokens :].transpose(1, 2).reshape(x.shape[0], -1, *feat_size)


class PyramidVisionTransformer(FlatStages):
    """PVT v1: four stages of (patch embed, position embedding, SR-attention blocks)."""

    def __init__(
        self,
        img_size: Union[int, tuple[int, int]] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
    ):
        super().__init__()
        if global_pool != "token":
            raise ModelError(f"global_pool {global_pool!r}: PVT v1 classifies from its class token ('token')")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dims[-1]
        rates = calculate_drop_path_rates(drop_path_rate, sum(depths))  # linear over all blocks, as the official
        dpr = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(len(depths))]
        grid, prev, reduction = to_2tuple(img_size), in_chans, 1
        self.stages, self.feature_info = nn.ModuleList(), []
        for i, dim in enumerate(embed_dims):
            patch = patch_size if i == 0 else 2
            grid, reduction = tuple(g // patch for g in grid), reduction * patch
            self.stages.append(PvtStage(
                prev, dim, depths[i], patch, grid, num_heads[i], mlp_ratios[i], sr_ratios[i],
                cls_token=i == len(embed_dims) - 1, qkv_bias=qkv_bias, pos_drop=pos_drop_rate,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer,
            ))
            self.feature_info += [
                dict(module=f"stages.{i}.blocks.{j}", num_chs=dim, reduction=reduction) for j in range(depths[i])
            ]
            prev = dim
        self.norm = norm_layer(self.embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)
            if stage.cls_token is not None:
                trunc_normal_(stage.cls_token, std=0.02)
        self.apply(init_weights)  # the official init: Linear and LayerNorm only, convs keep PyTorch's

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"stages.{i}.pos_embed" for i in range(len(self.stages))} | {f"stages.{len(self.stages) - 1}.cls_token"}

default_cfgs = generate_default_cfgs({"pvt_tiny": default_cfg(first_conv="stages.0.patch_embed.proj")})


@register_model
def pvt_tiny(pretrained: bool = False, **kwargs) -> PyramidVisionTransformer:
    """PVT-Tiny (v1): dims 64/128/320/512, depths 2/2/2/2, heads 1/2/5/8, mlp 8/8/4/4, SR 8/4/2/1."""
    defaults = dict(
        patch_size=4, embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), qkv_bias=True,
    )
    return build(PyramidVisionTransformer, "pvt_tiny", pretrained, defaults, kwargs)
