"""Student block features for locality guidance: chosen block outputs as B x C x h x w maps.

A block's feature is its output after the residual, before any final (or stage) norm,
patch tokens only (class/distillation tokens dropped), reshaped to ``B x C x h x w``.
Blocks are counted flat over stages (PiT-Ti: 0..11 over depths 2/6/4; PVTv2-b0: 0..7 over
2/2/2/2). Indices may be negative (Python style, -1 = last block); maps come back in the
order asked, repeats included. Everything is differentiable and hook-free.

Training needs logits and maps from one pass: use ``forward_with_blocks``, which runs the
whole model once (every parameter used, as DDP expects). ``block_features`` alone stops
after the last requested block where the family allows it. ``forward_trunk`` returns the
``forward_features`` output beside the maps, for callers that also read ``token_grid`` (the
final patch tokens after the final norm) from the same pass.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import walks  # noqa: F401  (registers the supported families)
from .errors import ModelError
from .families import family_of, model_name


def num_blocks(model: nn.Module) -> int:
    """Transformer blocks in the student, counted flat over stages."""
    return len(family_of(model).channels(model))


def resolve_blocks(model: nn.Module, blocks: Sequence[int]) -> list[int]:
    """Blocks as non-negative indices; ModelError naming the model for any out of range."""
    n = num_blocks(model)
    out = []
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int):
            raise ModelError(f"{model_name(model)}: block index {b!r} is not an integer")
        if not -n <= b < n:
            raise ModelError(
                f"{model_name(model)}: block {b} is out of range; it has num_blocks={n} (valid: 0..{n - 1}, or -{n}..-1)"
            )
        out.append(b % n)
    return out


def block_channels(model: nn.Module, blocks: Sequence[int]) -> list[int]:
    """Channel count of each requested block's map (what a 1x1 aligner takes in)."""
    widths = family_of(model).channels(model)
    return [widths[b] for b in resolve_blocks(model, blocks)]


def _walk(model: nn.Module, x: torch.Tensor, blocks: Sequence[int], final: bool):
    family = family_of(model)
    wanted = resolve_blocks(model, blocks)
    take = sorted(set(wanted))
    feats, maps = family.walk(model, x, take, final)
    by_block = dict(zip(take, maps))
    return feats, [by_block[b] for b in wanted]


def block_features(model: nn.Module, x: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]:
    """The outputs of the chosen blocks as B x C x h x w maps, in the order asked."""
    return _walk(model, x, blocks, final=False)[1]


def forward_trunk(model: nn.Module, x: torch.Tensor, blocks: Sequence[int] = ()):
    """(forward_features output, block maps) from a single pass over the whole trunk."""
    return _walk(model, x, blocks, final=True)


def forward_with_blocks(model: nn.Module, x: torch.Tensor, blocks: Sequence[int]):
    """(model's own output, block maps) from a single pass; the output equals model(x)."""
    feats, maps = forward_trunk(model, x, blocks)
    return model.forward_head(feats), maps


def has_token_grid(model: nn.Module) -> bool:
    """Whether the student's forward_features output holds its final patch-token grid."""
    return family_of(model).tokens is not None


def token_grid(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """The final patch tokens after the final norm, B x C x h x w, from forward_features' output."""
    tokens = family_of(model).tokens
    if tokens is None:
        raise ModelError(f"{model_name(model)}: its forward_features keeps no patch-token grid (class tokens only)")
    return tokens(model, feats)
