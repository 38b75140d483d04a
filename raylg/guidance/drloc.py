"""DRLoc (Liu et al., "Efficient Training of Visual Transformers with Small Datasets", 2021):
a dense relative localization task on the student's final token grid.

Per image, m token pairs are sampled uniformly (with replacement) from the h x w grid of final
patch tokens (after the final norm; ``Context.tokens``). An MLP head (2C -> 512 -> 512 -> 2)
reads each pair's two tokens, concatenated, and predicts their offset in grid cells,
(row_i - row_j, col_i - col_j); the loss is the L1 distance, weighted by lambda. The head is a
submodule of the term, so the task owns it, the optimizer trains it and checkpoints hold it.

Pairs are drawn from torch's global RNG (saved in checkpoints, so a resumed run draws the same
pairs); the term is only built when lambda > 0, so a run without it draws nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raylg.guidance.base import Context


def sample_pairs(batch: int, h: int, w: int, m: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two B x m tensors of flat grid positions (row * w + col), uniform over the h x w grid."""
    pos = torch.randint(0, h * w, (2, batch, m), device=device)
    return pos[0], pos[1]


def offsets(p: torch.Tensor, q: torch.Tensor, w: int) -> torch.Tensor:
    """DRLoc's regression targets: (row_p - row_q, col_p - col_q) in grid cells, ... x 2, float."""
    return torch.stack((p // w - q // w, p % w - q % w), dim=-1).float()


def gather_pairs(tokens: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """tokens B x C x h x w, p/q B x m flat positions -> B x m x 2C (token p, then token q)."""
    B, C = tokens.shape[:2]
    flat = tokens.flatten(2).transpose(1, 2)  # B x hw x C
    tp = torch.gather(flat, 1, p[..., None].expand(-1, -1, C))
    tq = torch.gather(flat, 1, q[..., None].expand(-1, -1, C))
    return torch.cat((tp, tq), dim=-1)


class DenseRelativeLocalization(nn.Module):
    needs_tokens = True  # the task computes Context.tokens from the same pass as the logits

    def __init__(self, channels: int, weight: float, m: int = 64, hidden: int = 512):
        super().__init__()
        self.weight, self.m = float(weight), int(m)
        self.head = nn.Sequential(nn.Linear(2 * channels, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))

    def forward(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if ctx.tokens is None:
            raise RuntimeError("DRLoc needs the student's final token grid (Context.tokens)")
        B, _, h, w = ctx.tokens.shape
        p, q = sample_pairs(B, h, w, self.m, device=ctx.tokens.device)
        pred = self.head(gather_pairs(ctx.tokens, p, q))
        l1 = F.l1_loss(pred.float(), offsets(p, q, w))
        return self.weight * l1, {"l1": l1.detach()}
