"""CvT, the Convolutional vision Transformer (Wu et al., ICCV 2021), in timm's style.

timm has no CvT. Three stages, each: a convolutional token embedding (an overlapping
k x k conv with stride, then LayerNorm), then blocks whose attention projects q, k and v
through a depthwise k x k conv + BatchNorm (``'dw_bn'``) on the token grid before the usual
linear projections, k and v with stride 2 (so attention is over a 4x smaller key/value
grid). No position embeddings: the convolutions carry position. A class token joins the
sequence in the last stage only, and the head reads it after the final norm.

- ``cvt_13``: dims 64/192/384, depths 1/2/10, heads 1/3/6, mlp ratio 4, embeddings 7/3/3
  with strides 4/2/2 and paddings 2/1/1, qkv bias, QuickGELU, LayerNorm eps 1e-5: the
  official ``cvt-13-224x224.yaml`` and lkhl/tiny-transformers' ``cvt-13_c100_*.yaml``.
  19,997,480 parameters at 224 px / 1000 classes (published 20M; exactly what the official
  code builds, and its outputs match raylg's to 2e-6 with the same weights); 19,650,980 at
  100 classes. Total stride 16: 224 px -> 56, 28, 14 token grids. It also runs at 32 px as it
  is: 8, 4, 2 grids (the last stage attends from 2x2 queries to a single k/v position
  besides the class token).
- ``cvt_13_s2_32``: the same blocks with a 3x3, stride-2, padding-1 first embedding, for
  native 32 px input: 16, 8, 4 grids (total stride 8), like raylg's deit_tiny_patch4_32
  next to DeiT-Ti's 224 setting. The first conv shrinks from 7x7 to 3x3: 19,643,300
  parameters at 100 classes, 7,680 fewer than cvt_13 at 3 input channels.

BatchNorm sits in every q/k/v projection, so a training-mode batch of one image fails where
a k/v grid is 1x1 (cvt_13 at 32 px: the last stage's); any batch of two or more works.

Block numbering is flat over stages (0 for stage 1's block, 1-2 for stage 2's, 3-12 for
stage 3's), as in the reference's hooks and raylg's layer maps; ``forward_intermediates``
returns a block's output after its residual, class token dropped, as a B x C x h x w map.

Differences from the official code (microsoft/CvT ``lib/models/cls_cvt.py``), none of which
changes a freshly initialised model's function:
- ``forward_features`` returns every token after the final norm (B x (1 + hw) x C, the
  class token first; the norm is per token, so the class token is what the official
  normalises alone) and ``forward_head`` reads the class token, the timm split; the
  official squeezes the batch dimension away at batch 1, here it stays;
- attention runs through ``F.scaled_dot_product_attention`` with the official scale,
  ``dim ** -0.5`` over the stage width (not the head width; kept as the official has it);
- ``drop_path_rate`` given as one number is the last stage's (each stage's rates rise
  linearly from 0 to its own, the official's per-stage rule), so model.drop_path=0.1 is
  the official CvT-13 spec ``DROP_PATH_RATE: [0.0, 0.0, 0.1]``; a per-stage sequence is
  taken as is;
- a q projection that would change the grid (stride_q > 1, or padding other than
  (kernel - 1) / 2) is rejected at build time; the official builds it and then fails in
  the residual add.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, QuickGELU, to_2tuple, trunc_normal_, use_fused_attn
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .builder import FlatStages, build, default_cfg, init_weights
from .errors import ModelError

__all__ = ["CvT", "CvtBlock", "CvtStage", "ConvEmbed", "ConvProjection", "ConvAttention"]

_METHODS = ("dw_bn", "avg", "linear")


def _conv_out(n: int, kernel: int, stride: int, padding: int, ceil: bool = False) -> int:
    span = n + 2 * padding - kernel
    return (-(-span // stride) if ceil else span // stride) + 1


class ConvEmbed(nn.Module):
    """Overlapping conv token embedding: B x C x H x W -> conv(k, s, p) -> LayerNorm over channels."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int,
                 norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        self.patch_size, self.stride, self.padding = patch_size, stride, padding
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding)
        self.norm = norm_layer(embed_dim)

    def feat_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(_conv_out(n, self.patch_size, self.stride, self.padding) for n in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvProjection(nn.Module):
    """The token grid (B x C x H x W) to projected tokens (B x N x C) before q/k/v's linear layer.

    ``'dw_bn'``: depthwise k x k conv (no bias) + BatchNorm; ``'avg'``: k x k average pool
    (ceil mode, as the official); ``'linear'``: the grid's tokens as they are.
    """

    def __init__(self, dim: int, method: str, kernel_size: int, stride: int, padding: int):
        super().__init__()
        if method not in _METHODS:
            raise ModelError(f"qkv_proj_method {method!r}: use one of {', '.join(_METHODS)}")
        self.method, self.kernel_size, self.stride, self.padding = method, kernel_size, stride, padding
        if method == "dw_bn":
            self.conv = nn.Conv2d(dim, dim, kernel_size, stride=stride, padding=padding, groups=dim, bias=False)
            self.bn = nn.BatchNorm2d(dim)
        elif method == "avg":
            self.pool = nn.AvgPool2d(kernel_size, stride=stride, padding=padding, ceil_mode=True)

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        if self.method == "linear":
            return size
        return tuple(_conv_out(n, self.kernel_size, self.stride, self.padding, ceil=self.method == "avg") for n in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "dw_bn":
            x = self.bn(self.conv(x))
        elif self.method == "avg":
            x = self.pool(x)
        return x.flatten(2).transpose(1, 2)


class ConvAttention(nn.Module):
    """Multi-head attention with convolutional q/k/v projections; prefix tokens skip the convs."""

    fused_attn: torch.jit.Final[bool]

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 method: str = "dw_bn", kernel_size: int = 3, stride_q: int = 1, stride_kv: int = 2,
                 padding_q: int = 1, padding_kv: int = 1, num_prefix_tokens: int = 0):
        super().__init__()
        if dim % num_heads:
            raise ModelError(f"CvT stage width {dim} is not divisible by its {num_heads} heads")
        q_method = "linear" if method == "avg" else method  # the official: avg pooling for k/v only
        if q_method != "linear" and (stride_q != 1 or 2 * padding_q != kernel_size - 1):
            raise ModelError(f"CvT q projection (kernel {kernel_size}, stride {stride_q}, padding {padding_q}) would "
                             f"change the token grid and break the residual; use stride_q 1 and padding_q "
                             f"{(kernel_size - 1) // 2}")
        self.num_heads, self.num_prefix_tokens = num_heads, num_prefix_tokens
        self.scale = dim**-0.5  # sic: the official scales by the stage width, not the head width
        self.fused_attn = use_fused_attn()
        self.conv_proj_q = ConvProjection(dim, q_method, kernel_size, stride_q, padding_q)
        self.conv_proj_k = ConvProjection(dim, method, kernel_size, stride_kv, padding_kv)
        self.conv_proj_v = ConvProjection(dim, method, kernel_size, stride_kv, padding_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # B x N x C -> B x heads x N x C/heads
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        B, _, C = x.shape
        n = self.num_prefix_tokens
        prefix, grid = x[:, :n], x[:, n:].transpose(1, 2).reshape(B, C, *feat_size)
        q, k, v = (torch.cat((prefix, proj(grid)), dim=1) for proj in (self.conv_proj_q, self.conv_proj_k, self.conv_proj_v))
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                               scale=self.scale)
        else:
            attn = self.attn_drop((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1))
            x = attn @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, -1, C)))


class CvtBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)); QuickGELU in the MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer: Callable[..., nn.Module] = QuickGELU, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 **attn_kwargs):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = ConvAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, **attn_kwargs)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class CvtStage(nn.Module):
    """Conv token embedding (map -> tokens), an optional class token, blocks."""

    def __init__(self, in_chans: int, dim: int, depth: int, patch_size: int, patch_stride: int, patch_padding: int,
                 num_heads: int, mlp_ratio: float, cls_token: bool = False, qkv_bias: bool = True,
                 pos_drop: float = 0.0, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: Sequence[float] = (),
                 act_layer: Callable[..., nn.Module] = QuickGELU, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 **attn_kwargs):
        super().__init__()
        self.patch_embed = ConvEmbed(in_chans, dim, patch_size, patch_stride, patch_padding, norm_layer)
        self.num_prefix_tokens = int(cls_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos_drop = nn.Dropout(pos_drop)
        self.blocks = nn.ModuleList([
            CvtBlock(dim, num_heads, mlp_ratio, qkv_bias, proj_drop, attn_drop, drop_path[i], act_layer, norm_layer,
                     num_prefix_tokens=self.num_prefix_tokens, **attn_kwargs)
            for i in range(depth)
        ])

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.patch_embed(x)
        feat_size = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # B x hw x C
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.pos_drop(x), feat_size

    def to_map(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        """Patch tokens (prefix dropped) as a B x C x h x w map."""
        return x[:, self.num_prefix_tokens :].transpose(1, 2).reshape(x.shape[0], -1, *feat_size)


def _per_stage(value, n: int, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ModelError(f"CvT {name}: {len(value)} values {list(value)} for {n} stages; give one per stage")
        return tuple(value)
    return (value,) * n


def _stage_rates(rate: float, depth: int) -> list[float]:
    return [float(r) for r in torch.linspace(0, rate, depth, device="cpu")] if depth > 1 else [0.0] * depth


class CvT(FlatStages):
    """CvT: stages of (conv token embedding, conv-projection attention blocks), class-token head."""

    def __init__(
        self,
        img_size: Union[int, tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: Optional[str] = None,
        embed_dims: Sequence[int] = (64, 192, 384),
        depths: Sequence[int] = (1, 2, 10),
        num_heads: Sequence[int] = (1, 3, 6),
        mlp_ratios: Union[float, Sequence[float]] = 4.0,
        patch_sizes: Sequence[int] = (7, 3, 3),
        patch_strides: Sequence[int] = (4, 2, 2),
        patch_paddings: Sequence[int] = (2, 1, 1),
        cls_token: Sequence[bool] = (False, False, True),
        qkv_bias: Union[bool, Sequence[bool]] = True,
        qkv_proj_method: Union[str, Sequence[str]] = "dw_bn",
        kernel_qkv: Union[int, Sequence[int]] = 3,
        stride_q: Union[int, Sequence[int]] = 1,
        stride_kv: Union[int, Sequence[int]] = 2,
        padding_q: Union[int, Sequence[int]] = 1,
        padding_kv: Union[int, Sequence[int]] = 1,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: Union[float, Sequence[float]] = 0.0,
        act_layer: Optional[Callable[..., nn.Module]] = None,
        norm_layer: Optional[Callable[[int], nn.Module]] = None,
    ):
        super().__init__()
        n = len(embed_dims)
        per = {k: _per_stage(v, n, k) for k, v in dict(
            depths=depths, num_heads=num_heads, mlp_ratios=mlp_ratios, patch_sizes=patch_sizes,
            patch_strides=patch_strides, patch_paddings=patch_paddings, cls_token=cls_token, qkv_bias=qkv_bias,
            qkv_proj_method=qkv_proj_method, kernel_qkv=kernel_qkv, stride_q=stride_q, stride_kv=stride_kv,
            padding_q=padding_q, padding_kv=padding_kv).items()}
        global_pool = global_pool if global_pool is not None else ("token" if per["cls_token"][-1] else "avg")
        if global_pool not in ("token", "avg"):
            raise ModelError(f"global_pool {global_pool!r}: use 'token' (the last stage's class token) or 'avg'")
        if global_pool == "token" and not per["cls_token"][-1]:
            raise ModelError("global_pool 'token' needs a class token in the last stage (cls_token[-1] True); or use 'avg'")
        rates = (_per_stage(drop_path_rate, n, "drop_path_rate") if isinstance(drop_path_rate, (list, tuple))
                 else (0.0,) * (n - 1) + (float(drop_path_rate),))
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-5)
        act_layer = act_layer or QuickGELU
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dims[-1]
        self.num_prefix_tokens = int(per["cls_token"][-1])
        self.stages, self.feature_info = nn.ModuleList(), []
        prev, reduction = in_chans, 1
        for i, dim in enumerate(embed_dims):
            reduction *= per["patch_strides"][i]
            self.stages.append(CvtStage(
                prev, dim, per["depths"][i], per["patch_sizes"][i], per["patch_strides"][i], per["patch_paddings"][i],
                per["num_heads"][i], per["mlp_ratios"][i], cls_token=per["cls_token"][i], qkv_bias=per["qkv_bias"][i],
                pos_drop=pos_drop_rate, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                drop_path=_stage_rates(rates[i], per["depths"][i]), act_layer=act_layer, norm_layer=norm_layer,
                method=per["qkv_proj_method"][i], kernel_size=per["kernel_qkv"][i], stride_q=per["stride_q"][i],
                stride_kv=per["stride_kv"][i], padding_q=per["padding_q"][i], padding_kv=per["padding_kv"][i],
            ))
            self.feature_info += [
                dict(module=f"stages.{i}.blocks.{j}", num_chs=dim, reduction=reduction) for j in range(per["depths"][i])
            ]
            prev = dim
        self.img_size = to_2tuple(img_size)
        problem = self.size_error(self.img_size)
        if problem:
            raise ModelError(f"CvT cannot take {self.img_size[0]}x{self.img_size[1]} input: {problem}")
        self.norm = norm_layer(self.embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(partial(init_weights, batchnorm=True))  # the official trunc_norm init; convs keep PyTorch's
        for stage in self.stages:
            if stage.cls_token is not None:
                trunc_normal_(stage.cls_token, std=0.02)

    def grid_sizes(self, img_size: Union[int, tuple[int, int]]) -> list[tuple[int, int]]:
        """The (h, w) token grid of every stage for an input of img_size."""
        size, out = to_2tuple(img_size), []
        for stage in self.stages:
            size = stage.patch_embed.feat_size(size)
            out.append(size)
        return out

    def size_error(self, img_size: Union[int, tuple[int, int]]) -> Optional[str]:
        """Why an input of img_size leaves a stage without tokens, or None."""
        size = to_2tuple(img_size)
        for i, stage in enumerate(self.stages):
            e = stage.patch_embed
            new = e.feat_size(size)
            if min(new) < 1:
                return (f"stage {i + 1}'s {e.patch_size}x{e.patch_size} embedding (stride {e.stride}, padding "
                        f"{e.padding}) leaves no tokens from a {size[0]}x{size[1]} grid")
            size = new
        return None

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"stages.{i}.cls_token" for i, s in enumerate(self.stages) if s.cls_token is not None}

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ("token", "avg") or (global_pool == "token" and not self.num_prefix_tokens):
                raise ModelError(f"global_pool {global_pool!r}: use 'avg'" + (" or 'token'" if self.num_prefix_tokens else ""))
            self.global_pool = global_pool
        super().reset_classifier(num_classes)

def _cfg(**kwargs):
    return default_cfg(**{"crop_pct": 0.875, "first_conv": "stages.0.patch_embed.proj", "license": "mit", **kwargs})


default_cfgs = generate_default_cfgs({
    "cvt_13": _cfg(),
    "cvt_13_s2_32": _cfg(num_classes=100, input_size=(3, 32, 32), crop_pct=1.0),
})

_CVT_13 = dict(embed_dims=(64, 192, 384), depths=(1, 2, 10), num_heads=(1, 3, 6), mlp_ratios=4.0,
               patch_sizes=(7, 3, 3), patch_strides=(4, 2, 2), patch_paddings=(2, 1, 1), cls_token=(False, False, True))


@register_model
def cvt_13(pretrained: bool = False, **kwargs) -> CvT:
    """CvT-13: dims 64/192/384, depths 1/2/10, heads 1/3/6, embeddings 7/3/3 with strides 4/2/2."""
    return build(CvT, "cvt_13", pretrained, dict(_CVT_13), kwargs)


@register_model
def cvt_13_s2_32(pretrained: bool = False, **kwargs) -> CvT:
    """CvT-13 for native 32 px input: a 3x3 stride-2 first embedding (16, 8, 4 token grids at 32 px)."""
    defaults = dict(_CVT_13, img_size=32, patch_sizes=(3, 3, 3), patch_strides=(2, 2, 2), patch_paddings=(1, 1, 1))
    return build(CvT, "cvt_13_s2_32", pretrained, defaults, kwargs)
