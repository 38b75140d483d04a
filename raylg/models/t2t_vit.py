"""T2T-ViT (Yuan et al., ICCV 2021), written in timm's style and registered with timm.

Tokens-to-Token module: three soft splits (``nn.Unfold``, kernels 7/3/3, strides 4/2/2,
paddings 2/1/1), a one-head token transformer after each of the first two, then a linear
projection to the backbone width. Total stride 16: 224 px -> 14x14 tokens, 32 px -> 2x2.
Backbone: a class token, the fixed 1-D sinusoid position table, timm ViT blocks (no qkv
bias), a final norm and a class-token head.

- ``t2t_vit_7``: dim 256, 7 blocks, 4 heads, mlp ratio 2, token dim 64.
- ``t2t_vit_14``: dim 384, 14 blocks, 6 heads, mlp ratio 3, token dim 64.

Both use ``tokens_type='performer'`` like the official t2t_vit_7/14 (``'transformer'``, the
official t2t_vit_t_* token layer, is a keyword away). Parameters at 224 px / 1000 classes:
4,255,694 and 21,465,806 against the published 4.3M and 21.5M (the official code also
counts its frozen sinusoid table and performer projections: 4,310,222 and 21,545,550).

Differences from the official code (yitu-opensource/T2T-ViT), none of which changes the
function of a freshly initialised model:
- the sinusoid table and the performer's random projection are buffers, not frozen
  ``nn.Parameter``s, so ``parameters()`` holds trainable tensors only; the table is
  recomputed when the token count differs from the one built for (any size divisible by 16);
- the soft-split grid is tracked as (H, W), so non-square inputs work (the official code
  takes a square root);
- the performer's kernel runs in float32 with autocast off (the official code casts to
  float only part of it);
- attention scale is head_dim ** -0.5 (the official code switches to dim ** -0.5 only when
  loading its pretrained weights, which raylg never does).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from timm.layers import Mlp, calculate_drop_path_rates, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Block
from torch import nn

from .builder import BlockSequence, build, default_cfg, init_weights
from .errors import ModelError
from .sinusoid import sinusoid_table

__all__ = ["T2TViT", "TokenPerformer", "TokenTransformer", "TokensToToken"]


class TokenPerformer(nn.Module):
    """One-head linear attention with positive random features, ``v`` as the skip (the
    width changes from dim to out_dim), then an MLP: the official ``Token_performer``."""

    def __init__(self, dim: int, out_dim: int, kernel_ratio: float = 0.5, drop: float = 0.1, eps: float = 1e-8):
        super().__init__()
        self.out_dim, self.eps = out_dim, eps
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * out_dim)
        self.proj = nn.Linear(out_dim, out_dim)
        self.proj_drop = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, out_dim, drop=(0.0, drop))
        m = int(out_dim * kernel_ratio)
        self.register_buffer("w", nn.init.orthogonal_(torch.empty(m, out_dim)) * math.sqrt(m))

    def _features(self, x: torch.Tensor) -> torch.Tensor:  # B x T x m, exp(w.x - |x|^2 / 2) / sqrt(m)
        return torch.exp(x @ self.w.t() - x.square().sum(-1, keepdim=True) / 2) / math.sqrt(self.w.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.out_dim, dim=-1)
        # fp32 under autocast too (exp overflows in half precision); meta tensors (shape checks) have no autocast
        no_autocast = torch.autocast(x.device.type, enabled=False) if x.device.type != "meta" else contextlib.nullcontext()
        with no_autocast:
            kp, qp = self._features(k.float()), self._features(q.float())
            denom = qp @ kp.sum(1, keepdim=True).transpose(1, 2)  # B x T x 1
            y = (qp @ (kp.transpose(1, 2) @ v.float())) / (denom + self.eps)
        x = v + self.proj_drop(self.proj(y.to(v.dtype)))
        return x + self.mlp(self.norm2(x))


class TokenTransformer(nn.Module):
    """One-head attention from dim to out_dim, ``v`` as the skip, then an MLP: the official
    ``Token_transformer`` (its scale comes from the input width, as there)."""

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float = 1.0, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.scale = dim**-0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * out_dim, bias=False)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(out_dim, out_dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        x = v + self.proj_drop(self.proj(y))
        return x + self.mlp(self.norm2(x))


def _unfolded(size: tuple[int, int], split: nn.Unfold) -> tuple[int, int]:
    k, s, p = split.kernel_size, split.stride, split.padding
    return tuple((n + 2 * p - k) // s + 1 for n in size)


class TokensToToken(nn.Module):
    """Soft split -> token layer -> re-structure, twice, then a last soft split and projection."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, token_dim: int = 64,
                 tokens_type: str = "performer", drop: float = 0.1):
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        if tokens_type == "performer":
            self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim, kernel_ratio=0.5, drop=drop)
            self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim, kernel_ratio=0.5, drop=drop)
        elif tokens_type == "transformer":
            self.attention1 = TokenTransformer(in_chans * 7 * 7, token_dim)
            self.attention2 = TokenTransformer(token_dim * 3 * 3, token_dim)
        else:
            raise ModelError(f"tokens_type {tokens_type!r}: use 'performer' or 'transformer'")
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)
        self.reduction = 4 * 2 * 2

    def feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        for split in (self.soft_split0, self.soft_split1, self.soft_split2):
            img_size = _unfolded(img_size, split)
        return img_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        B, size = x.shape[0], tuple(x.shape[-2:])
        for split, layer in ((self.soft_split0, self.attention1), (self.soft_split1, self.attention2)):
            x, size = layer(split(x).transpose(1, 2)), _unfolded(size, split)
            x = x.transpose(1, 2).reshape(B, -1, *size)
        x, size = self.soft_split2(x).transpose(1, 2), _unfolded(size, self.soft_split2)
        return self.project(x), size


class T2TViT(BlockSequence):
    """T2T-ViT: Tokens-to-Token embedding + a plain ViT with a class token and sinusoid positions."""

    def __init__(
        self,
        img_size: Union[int, tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        tokens_type: str = "performer",
        token_dim: int = 64,
        token_drop_rate: float = 0.1,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ModelError(f"global_pool {global_pool!r}: use 'token' or 'avg'")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.tokens_to_token = TokensToToken(in_chans, embed_dim, token_dim, tokens_type, token_drop_rate)
        self.grid_size = self.tokens_to_token.feat_size(to_2tuple(img_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sinusoid_table(1 + self.grid_size[0] * self.grid_size[1], embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=nn.LayerNorm)
            for i in range(depth)
        ])
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=self.tokens_to_token.reduction) for i in range(depth)
        ]
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = global_pool
        super().reset_classifier(num_classes)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, (H, W) = self.tokens_to_token(x)
        pos = self.pos_embed
        if pos.shape[1] != 1 + H * W:  # another input size than built for: the same formula, longer or shorter
            pos = sinusoid_table(1 + H * W, self.embed_dim).to(x.device)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.pos_drop(x + pos.to(x.dtype)), (H, W)

default_cfgs = generate_default_cfgs({
    name: default_cfg(first_conv="tokens_to_token.project") for name in ("t2t_vit_7", "t2t_vit_14")
})


@register_model
def t2t_vit_7(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-7: performer T2T module (token dim 64), dim 256, 7 blocks, 4 heads, mlp ratio 2."""
    return build(T2TViT, "t2t_vit_7", pretrained, dict(embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0), kwargs)


@register_model
def t2t_vit_14(pretrained: bool = False, **kwargs) -> T2TViT:
    """T2T-ViT-14: performer T2T module (token dim 64), dim 384, 14 blocks, 6 heads, mlp ratio 3."""
    return build(T2TViT, "t2t_vit_14", pretrained, dict(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0), kwargs)
