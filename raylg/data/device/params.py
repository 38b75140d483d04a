"""Per-sample random parameters for an epoch, drawn on the host with the rules of timm/torchvision
(RandomResizedCrop, RandAugment's op choice and magnitude, ColorJitter, RandomErasing)."""

from __future__ import annotations

import math

import numpy as np

from .program import BLEND_OPS, GEOMETRIC_OPS, KIND, POINT_OPS, RandAugmentSpec

# ---------------------------------------------------------------------------------------
# per-sample random parameters, drawn on the host for an epoch


def _rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**63, int(epoch), int(rank), 0x5EED])


def draw_rrc(rng: np.random.Generator, n: int, H: int, W: int, scale, ratio) -> np.ndarray:
    """timm/torchvision RandomResizedCrop.get_params for n images: (n, 4) int64 rows (i, j, h, w)."""
    area = H * W
    target = rng.uniform(scale[0], scale[1], (n, 10)) * area
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, 10)))
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w <= W) & (h <= H)
    first = ok.argmax(1)
    rows = np.arange(n)
    has = ok[rows, first]
    hh, ww = h[rows, first], w[rows, first]
    # fallback: central crop at the nearest allowed ratio
    in_ratio = W / H
    if in_ratio < min(ratio):
        fw, fh = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = H, int(round(H * max(ratio)))
    else:
        fw, fh = W, H
    hh, ww = np.where(has, hh, fh), np.where(has, ww, fw)
    i = np.floor(rng.random(n) * (H - hh + 1)).astype(np.int64)
    j = np.floor(rng.random(n) * (W - ww + 1)).astype(np.int64)
    i, j = np.where(has, i, (H - fh) // 2), np.where(has, j, (W - fw) // 2)
    return np.stack([i, j, hh, ww], 1)


def draw_erase(rng: np.random.Generator, n: int, H: int, W: int, p: float, area_range, log_aspect) -> np.ndarray:
    """timm RandomErasing (one box, 'const'): (n, 4) int64 rows (top, left, h, w); h = 0: not erased."""
    area = H * W
    apply = rng.random(n) <= p
    target = rng.uniform(area_range[0], area_range[1], (n, 10)) * area
    aspect = np.exp(rng.uniform(log_aspect[0], log_aspect[1], (n, 10)))
    h = np.round(np.sqrt(target * aspect)).astype(np.int64)
    w = np.round(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w < W) & (h < H)
    first = ok.argmax(1)
    rows = np.arange(n)
    has = ok[rows, first] & apply
    hh, ww = np.where(has, h[rows, first], 0), np.where(has, w[rows, first], 0)
    top = np.floor(rng.random(n) * (H - hh + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (W - ww + 1)).astype(np.int64)
    return np.stack([top, left, hh, ww], 1)


def _negate(rng, v):
    return np.where(rng.random(v.shape) > 0.5, -v, v)


def _pil_affine(kind: np.ndarray, v: np.ndarray, H: int, W: int) -> np.ndarray:
    """PIL's (a, b, c, d, e, f) output->input matrices for geometric RandAugment ops."""
    n = len(kind)
    A = np.tile(np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), (n, 1))
    for name, col in (("ShearX", 1), ("ShearY", 3), ("TranslateX", 2), ("TranslateY", 5),
                      ("TranslateXRel", 2), ("TranslateYRel", 5)):
        m = kind == name
        A[m, col] = v[m]
    m = kind == "Rotate"
    if m.any():
        angle = -np.radians(v[m])
        c, s = np.round(np.cos(angle), 15), np.round(np.sin(angle), 15)
        cx, cy = W / 2.0, H / 2.0
        A[m, 0], A[m, 1], A[m, 3], A[m, 4] = c, s, -s, c
        A[m, 2] = c * -cx + s * -cy + cx
        A[m, 5] = -s * -cx + c * -cy + cy
    return A


def draw_randaug(rng: np.random.Generator, spec: RandAugmentSpec, n: int, H: int, W: int, px_scale: float = 1.0):
    """Per layer: (names chosen (n,), kinds (n,), arg (n,), affine (n, 6)), timm's rule per image, for
    images of H x W; px_scale scales the absolute translations (TranslateX/Y, given at the output
    size) when the ops run at another size."""
    K = len(spec.names)
    if spec.weights is None:
        choice = rng.integers(0, K, (n, spec.num_layers))
    else:  # without replacement, in draw order (Plackett-Luce, as numpy's choice): Gumbel top-k
        keys = np.log(spec.weights)[None, :] - np.log(-np.log(rng.random((n, K))))
        choice = np.argsort(-keys, axis=1)[:, :spec.num_layers]
    names = np.array(spec.names, dtype=object)
    out = []
    for layer in range(spec.num_layers):
        op = choice[:, layer]
        apply = rng.random(n) <= spec.probs[op]
        mag, mstd, mmax = spec.magnitudes[op], spec.mstds[op], spec.mmaxes[op]
        gauss = rng.normal(mag, np.where(np.isfinite(mstd) & (mstd > 0), mstd, 1.0))
        unif = rng.random(n) * mag
        m = np.where(np.isinf(mstd), unif, np.where(mstd > 0, gauss, mag))
        m = np.clip(m, 0.0, mmax)
        name = names[op]
        arg = np.zeros(n)
        kind = np.zeros(n, dtype=np.int64)
        lv = m / 10.0
        for nm in set(name[apply].tolist()):
            s = apply & (name == nm)
            if nm in GEOMETRIC_OPS:
                kind[s] = KIND["warp"]
            elif nm in BLEND_OPS:
                kind[s] = KIND[BLEND_OPS[nm]]
            else:
                kind[s] = KIND[POINT_OPS[nm]]
        # the level -> argument rules of timm.data.auto_augment (LEVEL_TO_ARG)
        neg = rng.random(n) > 0.5
        sign = np.where(neg, -1.0, 1.0)
        rules = {
            "Rotate": lv * 30.0 * sign,
            "ShearX": lv * 0.3 * sign, "ShearY": lv * 0.3 * sign,
            "TranslateX": lv * spec.translate_const * px_scale * sign, "TranslateY": lv * spec.translate_const * px_scale * sign,
            "TranslateXRel": lv * spec.translate_pct * sign * W, "TranslateYRel": lv * spec.translate_pct * sign * H,
            "Posterize": np.floor(lv * 4), "PosterizeIncreasing": 4 - np.floor(lv * 4),
            "PosterizeOriginal": np.floor(lv * 4) + 4,
            "Solarize": np.minimum(256, np.floor(lv * 256)), "SolarizeIncreasing": 256 - np.minimum(256, np.floor(lv * 256)),
            "SolarizeAdd": np.minimum(128, np.floor(lv * 110)),
        }
        enhance = lv * 1.8 + 0.1
        increasing = np.maximum(0.1, 1.0 + lv * 0.9 * sign)
        for nm in ("Color", "Contrast", "Brightness", "Sharpness"):
            rules[nm], rules[nm + "Increasing"] = enhance, increasing
        for nm, val in rules.items():
            s = name == nm
            arg[s] = val[s]
        geo = np.isin(name, list(GEOMETRIC_OPS)) & apply
        affine = _pil_affine(np.where(geo, name, ""), arg, H, W)
        out.append((name, kind, arg, affine, apply))
    return out


def draw_jitter(rng: np.random.Generator, jitter: dict, n: int):
    """torchvision ColorJitter: per image a random order of the present factors; per slot (kinds, args)."""
    keys = [k for k in ("brightness", "contrast", "saturation") if k in jitter]
    kinds = {"brightness": KIND["brightness"], "contrast": KIND["contrast"], "saturation": KIND["color"]}
    factors = {k: rng.uniform(jitter[k][0], jitter[k][1], n) for k in keys}
    order = np.argsort(rng.random((n, len(keys))), axis=1)
    out = []
    for slot in range(len(keys)):
        kind = np.zeros(n, dtype=np.int64)
        arg = np.zeros(n)
        for ki, k in enumerate(keys):
            s = order[:, slot] == ki
            kind[s] = kinds[k]
            arg[s] = factors[k][s]
        out.append((kind, arg))
    return out


