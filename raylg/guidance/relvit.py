"""RelViT (Camporese, Izzo, Ballan, "Where are my Neighbors? Exploiting Patches Relations in
Self-Supervised Vision Transformer", BMVC 2022): self-supervised tasks on the spatial relations
between image patches, computed on *every* final patch token (``Context.tokens``: after the
final norm, prefix tokens dropped, B x C x h x w), so every output token gets a training signal.

Each task is a term of its own (logged apart), weighted ``guidance.relvit.weight`` x its factor:

    relvit_rel   for every ordered token pair (i, j), i == j included, the 9-class relation of
                 i to j: 3 * (sign(row_i - row_j) + 1) + (sign(col_i - col_j) + 1), i.e.
                 LU CU RU / LC CC RC / LD CD RD (their ``create_connectivity_matrix``). Head: per
                 class k, a bias-free query and key projection C -> C // 9; the pair's logit for
                 k is q_k(t_i) . k_k(t_j) / sqrt(C // 9) (their ``MultiHeadAttentionScores`` with
                 9 heads). CE over the B x h*w x h*w pairs.
    relvit_pos   the absolute grid position of every token: a linear head C -> h*w, CE.
    relvit_dist  for every token pair, the Euclidean grid distance scaled to [-1, 1]
                 (d / max d * 2 - 1): one query/key head C -> C, scaled dot product, MSE.

Targets come from where each token's content sits in the *original* image: the identity
unless the task shuffles the patches first (``PatchShuffle``, for the self-supervised stage),
in which case ``batch["patch_positions"]`` says, per image, which original block each token
slot holds. Heads are submodules of the terms, so the task owns, trains and checkpoints them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raylg.guidance.base import Context

POSITIONS_KEY = "patch_positions"  # B x h*w long: original flat block index at each token slot


def relation_targets(positions: torch.Tensor, w: int) -> torch.Tensor:
    """B x N original flat positions -> B x N x N relation classes (0..8) of token i to token j."""
    row, col = positions // w, positions % w
    dr = torch.sign(row[:, :, None] - row[:, None, :])
    dc = torch.sign(col[:, :, None] - col[:, None, :])
    return (3 * (dr + 1) + (dc + 1)).long()


def distance_targets(positions: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """B x N positions -> B x N x N Euclidean grid distances scaled to [-1, 1] (max distance -> 1)."""
    row, col = (positions // w).float(), (positions % w).float()
    d = torch.sqrt((row[:, :, None] - row[:, None, :]) ** 2 + (col[:, :, None] - col[:, None, :]) ** 2)
    return d / math.hypot(h - 1, w - 1) * 2 - 1


class PairScores(nn.Module):
    """k scaled dot-product scores per token pair: B x N x C -> B x N x N x k (classes last, so the
    loss and argmax run over contiguous rows)."""

    def __init__(self, channels: int, k: int):
        super().__init__()
        self.k, self.dim = k, channels // k
        if self.dim < 1:
            raise ValueError(f"RelViT: {channels} channels cannot feed {k} query/key heads")
        self.q = nn.Linear(channels, k * self.dim, bias=False)
        self.key = nn.Linear(channels, k * self.dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, N, _ = tokens.shape
        q = (self.q(tokens) / math.sqrt(self.dim)).view(B, N, self.k, self.dim).transpose(1, 2)  # B x k x N x d
        key = self.key(tokens).view(B, N, self.k, self.dim).transpose(1, 2)
        return (q @ key.transpose(-1, -2)).permute(0, 2, 3, 1).contiguous()


class _RelvitTask(nn.Module):
    needs_tokens = True  # the task computes Context.tokens from the same pass as the logits

    def __init__(self, grid: tuple[int, int], weight: float):
        super().__init__()
        self.grid, self.weight = (int(grid[0]), int(grid[1])), float(weight)

    def _tokens(self, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """(B x N x C tokens, B x N original positions)."""
        if ctx.tokens is None:
            raise RuntimeError(f"{type(self).__name__} needs the student's final token grid (Context.tokens)")
        B, C, h, w = ctx.tokens.shape
        if (h, w) != self.grid:
            raise RuntimeError(f"{type(self).__name__} was built for a {self.grid[0]}x{self.grid[1]} token grid, "
                               f"got {h}x{w}")
        positions = ctx.batch.get(POSITIONS_KEY)
        if positions is None:
            positions = torch.arange(h * w, device=ctx.tokens.device).expand(B, -1)
        return ctx.tokens.flatten(2).transpose(1, 2), positions


class SpatialRelations(_RelvitTask):
    def __init__(self, channels: int, grid: tuple[int, int], weight: float):
        super().__init__(grid, weight)
        self.head = PairScores(channels, 9)

    def forward(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens, positions = self._tokens(ctx)
        logits = self.head(tokens).float().flatten(0, 2)  # B*N*N pairs x 9
        target = relation_targets(positions, self.grid[1]).flatten()
        ce = F.cross_entropy(logits, target)
        acc = (logits.argmax(1) == target).float().mean() * 100.0
        return self.weight * ce, {"ce": ce.detach(), "acc": acc.detach()}


class AbsolutePositions(_RelvitTask):
    def __init__(self, channels: int, grid: tuple[int, int], weight: float):
        super().__init__(grid, weight)
        self.head = nn.Linear(channels, grid[0] * grid[1])

    def forward(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens, positions = self._tokens(ctx)
        logits = self.head(tokens).float().flatten(0, 1)  # B*N tokens x N positions
        ce = F.cross_entropy(logits, positions.flatten())
        acc = (logits.argmax(1) == positions.flatten()).float().mean() * 100.0
        return self.weight * ce, {"ce": ce.detach(), "acc": acc.detach()}


class PairDistances(_RelvitTask):
    def __init__(self, channels: int, grid: tuple[int, int], weight: float):
        super().__init__(grid, weight)
        self.head = PairScores(channels, 1)

    def forward(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens, positions = self._tokens(ctx)
        pred = self.head(tokens)[..., 0].float()  # B x N x N
        mse = F.mse_loss(pred, distance_targets(positions, *self.grid))
        return self.weight * mse, {"mse": mse.detach()}


TASKS = {"relvit_rel": ("relations", SpatialRelations), "relvit_pos": ("positions", AbsolutePositions),
         "relvit_dist": ("distances", PairDistances)}


def build_relvit_terms(rv, channels: int, grid: tuple[int, int]) -> dict[str, nn.Module]:
    """The RelViT terms that are on (weight x factor > 0), in a fixed order; rv: RelvitConfig."""
    terms = {}
    for name, (factor_key, cls) in TASKS.items():
        w = rv.weight * getattr(rv, factor_key)
        if w > 0:
            terms[name] = cls(channels, grid, w)
    return terms


class PatchShuffle:
    """Per image, permute the h x w blocks of the image that the final token grid covers (their
    ``--shuffle_patches``) and record in ``batch["patch_positions"]`` which original block each
    slot now holds. Removes the position-embedding shortcut of the RelViT tasks in the
    self-supervised stage. The task applies it before both passes, so an online teacher (LG) sees
    the same shuffled image. Permutations come from torch's RNG (checkpointed: exact resume)."""

    def __init__(self, grid: tuple[int, int]):
        self.grid = (int(grid[0]), int(grid[1]))

    def __call__(self, batch: dict) -> dict:
        x = batch["image"]
        B, C, H, W = x.shape
        h, w = self.grid
        if H % h or W % w:
            raise RuntimeError(f"patch shuffle: a {H}x{W} image does not split into a {h}x{w} grid of blocks")
        perm = torch.argsort(torch.rand(B, h * w, device=x.device), dim=1)
        blocks = x.reshape(B, C, h, H // h, w, W // w).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C, H // h, W // w)
        blocks = blocks[torch.arange(B, device=x.device)[:, None], perm]
        shuffled = blocks.reshape(B, h, w, C, H // h, W // w).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)
        return {**batch, "image": shuffled, POSITIONS_KEY: perm}
