"""Device-resident data for small datasets (``data.pipeline: device``).

The training split (the per_class subset, when there is one) is decoded once into a uint8
N x C x H x W tensor on the training device. Each batch is augmented there, in batched tensor
ops with per-sample random parameters, following the loader's own transform (``bundle.train.
transform``, timm's recipe) step by step: the program is compiled from that transform, so
the two paths cannot drift apart in what they configure.

    random-resized crop + flip   one op: per-sample PIL-style resampling matrices (crop box,
                                 scale/ratio as configured, bicubic or bilinear with PIL's
                                 kernels and antialias support, horizontal then vertical pass,
                                 uint8 rounding between), the flip folded into the matrix; the
                                 same op emits each sample's crop box and flip for feature replay
    RandAugment                  timm's ops and magnitude rule (m, mstd, mmax, inc, n, p, weights):
                                 per sample, n ops drawn, each applied with p, its magnitude
                                 drawn N(m, mstd) and clipped; geometric ops as one batched
                                 affine warp (PIL's matrices, fill = the mean colour)
    ColorJitter                  (timm's default when RandAugment is off) per-sample factors
                                 and per-sample order
    ToTensor, Normalize          one fused op (x * 1 / (255 std) - mean / std)
    resize to the output         only when the output enlarges the source at least twofold and
                                 RandAugment or jitter is on: the ops above run at the larger of
                                 the source's size and 32 px, then one bicubic matmul per axis
                                 enlarges the normalised batch (clipped to uint8's range)
    random erasing               timm's rule (area, aspect, 10 attempts), 'const' mode, at the
                                 output size; the boxes are known on the host, so only they are
                                 written

Ops run on chunks of whole batches (CHUNK_ELEMENTS output values), so a batch of small images
is not a few hundred dispatches of tiny ops; the crop matrices of every integer box (flipped
and not) are computed once per run and looked up (TABLE_ELEMENTS bounds their size).

Written by hand (torch): the resampling matrices, the per-sample affine warp (torch's
affine grid + grid_sample), the per-sample blends (colour, contrast, brightness, sharpness,
with PIL's truncation), posterize, solarize, solarize-add, invert, erasing masks. From
torchvision.transforms.v2.functional, on batched uint8 tensors: equalize (its per-image
histograms match PIL's exactly; torchvision's autocontrast rounds differently from PIL's LUT,
so that one is by hand too; torchvision's batched *transforms* draw one set of random
parameters per call, i.e. per batch, so they cannot serve the per-sample ops).

Random parameters are drawn on the host for a whole epoch at once, from a generator seeded by
(run seed, epoch, rank), and copied to the device once per epoch; each op's rows in each batch
are known on the host, so a batch costs no host<->device synchronisation. The shuffle order
is the loader's (torch.randperm with the generator seeded seed * 100_003 + epoch); under DDP the
epoch order is sharded like DistributedSampler (padded, rank::world_size). A resumed run sees
the same batches as an uninterrupted one: everything is a function of (seed, epoch, rank).

Evaluation splits are cached too, as the loader's own eval transform made them (PIL resize and
centre crop, uint8), so val/test figures are the loader path's bit for bit.

What it does not implement (refused by ``data.pipeline: device`` at build time, naming it; with
``auto`` the run falls back to the loader with a warning naming it): RandAugment transform sets
with ops outside timm's rand/rand-inc sets (e.g. ``3a``: Desaturate, GaussianBlur), AutoAugment
and AugMix policies, random interpolation, ColorJitter hue, erasing modes other than 'const'
or more than one box, and image sets whose images differ in size.
"""

from __future__ import annotations

from .errors import DevicePipelineError, DevicePipelineWarning, Unsupported
from .ops import KINDS, apply_kind, resample, resample_matrix, warp
from .params import _pil_affine, draw_erase, draw_jitter, draw_randaug, draw_rrc  # noqa: F401  (_pil_affine: tests)
from .pipeline import DEFAULT_FRACTION, DeviceEvalData, DeviceTrainData, OutputPool, Plan, budget, decode, plan
from .program import KIND, Program, RandAugmentSpec, compile_transform, unsupported, unsupported_config

__all__ = ["DEFAULT_FRACTION", "DeviceEvalData", "DevicePipelineError", "DevicePipelineWarning", "DeviceTrainData",
           "OutputPool", "KIND", "KINDS", "Plan", "Program", "RandAugmentSpec", "Unsupported", "apply_kind",
           "budget", "compile_transform", "decode", "draw_erase", "draw_jitter", "draw_randaug", "draw_rrc", "plan",
           "resample", "resample_matrix", "unsupported", "unsupported_config", "warp"]
