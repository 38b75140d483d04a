"""The batched ops, on float tensors holding uint8 values (PIL's semantics): PIL-style resampling
matrices, blends, posterize/solarize, autocontrast, the per-sample affine warp."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .program import KINDS

# ---------------------------------------------------------------------------------------
# the ops, on float tensors holding integer values 0..255 (uint8 semantics, as PIL's)


def _filter(name: str):
    if name == "bicubic":
        a = -0.5

        def f(x):
            x = x.abs()
            return torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                               torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))
        return f, 2.0

    def tri(x):
        return (1 - x.abs()).clamp_(min=0)
    return tri, 1.0


def resample_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, interpolation: str) -> torch.Tensor:
    """(B, out, in) weights of PIL's resize of the window [start, start + length) of a line of in_size
    pixels to out_size pixels (ImagingResample's precompute_coeffs: antialiased when shrinking)."""
    filt, support = _filter(interpolation)
    dev = start.device
    scale = (length / out_size)[:, None, None]
    fscale = scale.clamp(min=1.0)
    sup = support * fscale
    centre = (torch.arange(out_size, device=dev, dtype=torch.float32)[None, :, None] + 0.5) * scale  # crop coords
    x = torch.arange(in_size, device=dev, dtype=torch.float32)[None, None, :] - start[:, None, None]
    xmin = torch.trunc(centre - sup + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.trunc(centre + sup + 0.5), length[:, None, None])
    w = filt((x - centre + 0.5) / fscale) * ((x >= xmin) & (x < xmax))
    total = w.sum(-1, keepdim=True)
    return w / torch.where(total == 0, torch.ones_like(total), total)


def _round8(x: torch.Tensor) -> torch.Tensor:
    return x.add_(0.5).floor_().clamp_(0, 255)


def resample(x: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) float 0..255; wy (B, oh, H), wx (B, ow, W): horizontal pass, uint8 rounding,
    vertical pass, rounding (PIL's order)."""
    B, C, H, W = x.shape
    oh, ow = wy.shape[1], wx.shape[1]
    # channels folded into the matrix products' rows/columns (broadcasting the weights over C copies them;
    # with one channel the reshapes and transposes below are views)
    t = _round8(torch.bmm(x.reshape(B, C * H, W), wx.transpose(1, 2)))  # (B, C*H, ow)
    t = t.view(B, C, H, ow).transpose(1, 2).reshape(B, H, C * ow)
    y = _round8(torch.bmm(wy, t))  # (B, oh, C*ow)
    return y.view(B, oh, C, ow).transpose(1, 2).contiguous()


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's convert('L') (ITU-R 601-2, fixed point), as (B, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Image.blend(degenerate, x, factor) for uint8: truncated, clipped."""
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    return (degenerate + f * (x - degenerate)).clamp_(0, 255).floor_()


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, over 13), rounded; the border rows and
    columns kept. As shifted adds: a depthwise conv2d of one channel is slow on CPUs."""
    B, C, H, W = x.shape
    if H < 3 or W < 3:
        return x.clone()
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    inner = (box + 4 * x[:, :, 1:-1, 1:-1]).div_(13.0).add_(0.5).floor_().clamp_(0, 255)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0), per channel: its LUT int(i * scale + offset), in double."""
    lo = x.amin(dim=(2, 3), keepdim=True).double()
    hi = x.amax(dim=(2, 3), keepdim=True).double()
    span = hi - lo
    scale = 255.0 / torch.where(span > 0, span, torch.ones_like(span))
    offset = -lo * scale
    y = torch.trunc(x.double() * scale + offset).clamp_(0, 255).to(x.dtype)
    keep = (span > 0).to(x.dtype)  # a flat channel stays as it is (0/1 blends are exact; torch.where is slow on CPUs)
    return y.mul_(keep).add_(x * (1 - keep))


def warp(x: torch.Tensor, affine: torch.Tensor, fill: torch.Tensor, interpolation: str) -> torch.Tensor:
    """PIL Image.transform(AFFINE) per sample: affine (B, 6) maps output pixel centres to input
    coordinates; outside the input: fill. The matrices become affine_grid's normalised thetas."""
    B, C, H, W = x.shape
    a, b, c, d, e, f = affine.to(torch.float32).unbind(1)
    bx, dy = b * (H / W), d * (W / H)
    theta = torch.stack((a, bx, a + bx + c * (2.0 / W) - 1, dy, e, dy + e + f * (2.0 / H) - 1), 1).view(B, 2, 3)
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)
    g = grid.abs()
    inside = torch.maximum(g[..., 0], g[..., 1]).lt(1).unsqueeze(1).to(x.dtype)
    return _round8(out.mul_(inside).addcmul_(1 - inside, fill.view(1, C, 1, 1)))  # fill outside, exactly


def apply_kind(kind: int, x: torch.Tensor, arg: torch.Tensor, affine: torch.Tensor | None, fill, interpolation: str):
    """One op on the rows x (n, C, H, W) that drew it, with their arguments."""
    from torchvision.transforms.v2 import functional as TF

    name = KINDS[kind]
    v = arg.view(-1, 1, 1, 1)
    if name == "warp":
        return warp(x, affine, fill, interpolation)
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return TF.equalize(x.to(torch.uint8)).to(x.dtype)
    if name == "invert":
        return 255.0 - x
    if name == "posterize":  # bits >= 8: unchanged; 0: black (raylg's safe_posterize)
        step = torch.pow(2.0, (8.0 - v).clamp(0, 8))
        return torch.floor(x / step) * step
    if name == "solarize":  # x >= v: 255 - x (as 0/1 arithmetic: exact on integers, and faster than torch.where)
        return x + (x >= v).to(x.dtype) * (255.0 - 2 * x)
    if name == "solarize_add":
        return x + (x < 128).to(x.dtype) * ((x + v).clamp_(max=255) - x)
    if name == "color":
        return _blend(_gray(x).expand_as(x), x, arg)
    if name == "contrast":
        mean = torch.floor(_gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
        return _blend(mean.expand_as(x), x, arg)
    if name == "brightness":
        return _blend(torch.zeros_like(x), x, arg)
    if name == "sharpness":
        return _blend(_smooth(x), x, arg)
    raise ValueError(f"unknown op kind {kind}")


