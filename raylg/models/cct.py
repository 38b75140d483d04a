"""CCT, the Compact Convolutional Transformer (Hassani et al., 2021), in timm's style.

A convolutional tokenizer (n x [conv k x k without bias, ReLU, max-pool 3/2/1]) turns the
image into a token grid; transformer blocks with no class token follow; sequence pooling
(a softmax-weighted average of the tokens, weights from a linear layer) feeds the head.

- ``cct_7_3x1_32``: one 3x3 conv (stride 1, padding 1) + max-pool, 7 blocks, dim 256,
  4 heads, mlp ratio 2, learnable positions, built for native 32 px input: 16x16 tokens
  (total stride 2). 3,760,139 parameters at 32 px / 10 classes (published 3.76M, CIFAR-10);
  3,783,269 at 100 classes. ``pos_embed='sine'`` gives the official *_sine variant
  (a fixed table; 65,536 fewer parameters).

The block is CCT's own, not timm's ViT block: after the attention residual it normalises
the residual stream itself (``norm1``) before the MLP residual. Defaults follow the
official cct_7_3x1_32 (attention dropout 0.1, no other dropout; stochastic depth comes
from ``drop_path_rate``). Learnable positions are sized for the ``img_size`` the model is
built for and resampled (timm's ``resample_abs_pos_embed``) for another input size; the
official code rejects other sizes.
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Union

import torch
from timm.layers import Attention, DropPath, Mlp, calculate_drop_path_rates, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .builder import BlockSequence, build, default_cfg, init_weights
from .errors import ModelError
from .sinusoid import sinusoid_table

__all__ = ["CCT", "CctBlock", "ConvTokenizer"]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class ConvTokenizer(nn.Module):
    """n_conv_layers x (conv, ReLU, max-pool) -> a B x C x h x w token grid."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: int, padding: int,
                 n_conv_layers: int = 1, conv_planes: int = 64, pool_kernel_size: int = 3,
                 pool_stride: int = 2, pool_padding: int = 1):
        super().__init__()
        chans = [in_chans] + [conv_planes] * (n_conv_layers - 1) + [embed_dim]
        self.conv_layers = nn.Sequential(*[
            nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], kernel_size, stride=stride, padding=padding, bias=False),
                nn.ReLU(),
                nn.MaxPool2d(pool_kernel_size, stride=pool_stride, padding=pool_padding),
            )
            for i in range(n_conv_layers)
        ])
        self.reduction = (stride * pool_stride) ** n_conv_layers

    def feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        for layer in self.conv_layers:
            for op in (layer[0], layer[2]):
                k, s, p = (to_2tuple(v)[0] for v in (op.kernel_size, op.stride, op.padding))
                img_size = tuple((n + 2 * p - k) // s + 1 for n in img_size)
        return img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(x)


class CctBlock(nn.Module):
    """CCT's encoder layer: x = norm1(x + attn(pre_norm(x))); x = x + mlp(x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, proj_drop: float = 0.0,
                 attn_drop: float = 0.1, drop_path: float = 0.0):
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=False, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop_path1(self.attn(self.pre_norm(x))))
        return x + self.drop_path2(self.mlp(x))


class CCT(BlockSequence):
    """Convolutional tokenizer + CCT blocks + sequence pooling; no class token."""

    def __init__(
        self,
        img_size: Union[int, tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "seq",
        embed_dim: int = 768,
        depth: int = 14,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        kernel_size: int = 7,
        stride: Optional[int] = None,
        padding: Optional[int] = None,
        n_conv_layers: int = 1,
        pos_embed: str = "learnable",
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.1,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if global_pool != "seq":
            raise ModelError(f"global_pool {global_pool!r}: CCT pools by sequence pooling ('seq')")
        if pos_embed not in ("learnable", "sine"):
            raise ModelError(f"pos_embed {pos_embed!r}: use 'learnable' or 'sine'")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        stride = stride if stride is not None else max(1, kernel_size // 2 - 1)  # the official defaults
        padding = padding if padding is not None else max(1, kernel_size // 2)
        self.tokenizer = ConvTokenizer(in_chans, embed_dim, kernel_size, stride, padding, n_conv_layers)
        self.grid_size = self.tokenizer.feat_size(to_2tuple(img_size))
        num_tokens = self.grid_size[0] * self.grid_size[1]
        if pos_embed == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        else:
            self.register_buffer("pos_embed", sinusoid_table(num_tokens, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            CctBlock(embed_dim, num_heads, mlp_ratio, proj_drop_rate, attn_drop_rate, dpr[i]) for i in range(depth)
        ])
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=self.tokenizer.reduction) for i in range(depth)
        ]
        self.norm = nn.LayerNorm(embed_dim)
        self.attention_pool = nn.Linear(embed_dim, 1)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(partial(init_weights, conv=True))
        if pos_embed == "learnable":
            trunc_normal_(self.pos_embed, std=0.2)  # sic: the official std is 0.2

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} if isinstance(self.pos_embed, nn.Parameter) else set()

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.tokenizer(x)
        feat_size = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        if isinstance(self.pos_embed, nn.Parameter):
            pos = resample_abs_pos_embed(self.pos_embed, new_size=feat_size, old_size=self.grid_size, num_prefix_tokens=0)
        elif self.pos_embed.shape[1] == x.shape[1]:
            pos = self.pos_embed
        else:
            pos = sinusoid_table(x.shape[1], self.embed_dim).to(x.device)
        return self.pos_drop(x + pos.to(x.dtype)), feat_size

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        weights = self.attention_pool(x).softmax(dim=1)  # sequence pooling: B x N x 1
        x = self.head_drop((weights.transpose(1, 2) @ x).squeeze(1))
        return x if pre_logits else self.head(x)


default_cfgs = generate_default_cfgs({"cct_7_3x1_32": default_cfg(
    num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD,
    first_conv="tokenizer.conv_layers.0.0",
)})


@register_model
def cct_7_3x1_32(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/3x1 at 32 px: one 3x3 conv + max-pool tokenizer, 7 blocks, dim 256, 4 heads, mlp ratio 2."""
    defaults = dict(img_size=32, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0, kernel_size=3, n_conv_layers=1)
    return build(CCT, "cct_7_3x1_32", pretrained, defaults, kwargs)
