"""The fixed 1-D sinusoid position table of T2T-ViT and CCT's ``sine`` variant.

Row p, column i holds sin (even i) or cos (odd i) of p / 10000^(2*(i//2)/dim), as in the
official ``get_sinusoid_encoding`` (T2T-ViT) and ``sinusoidal_embedding`` (CCT).
"""

from __future__ import annotations

import torch


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """A 1 x length x dim float32 table, computed in float64 like the reference code."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(dim)
    angle = pos / torch.pow(10000.0, (2 * (i // 2)).to(torch.float64) / dim)
    return torch.where(i % 2 == 0, angle.sin(), angle.cos()).float().unsqueeze(0)
