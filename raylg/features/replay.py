"""Replay an image's crop box and flip on a teacher map of the whole (clean) image.

A map of the clean image covers the source image's fractional coordinates [0, 1]^2. The
student saw box [y0, x0, y1, x1] of the source, resized to its input (and maybe mirrored),
so the matching target is that box of the map, resampled to the map's own size: output pixel
centre g (fraction of the output, pixel-centre convention like PIL/torchvision resizes) reads
the map at y0 + g * (y1 - y0), and x1 - g * (x1 - x0) when flipped. Bilinear sampling,
borders clamped. A full box without flip returns the map unchanged (up to float rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def replay(maps: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """maps B x C x h x w (float), crop B x 4 fractions [y0, x0, y1, x1], flip B (bool) -> B x C x h x w."""
    crop = crop.to(device=maps.device, dtype=maps.dtype)
    y0, x0, y1, x1 = crop.unbind(1)
    sx = x1 - x0
    sx = torch.where(flip.to(maps.device).bool(), -sx, sx)
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, x0 + x1 - 1], 1),
                         torch.stack([zero, y1 - y0, y0 + y1 - 1], 1)], 1)
    grid = F.affine_grid(theta, list(maps.shape), align_corners=False)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
