"""What the colorization and split-brain reference steps share (selfsup's `crates/lab` and
`crates/colorization/src/net.rs` in PyTorch): sRGB -> CIE Lab (D65) as tensor ops, the in-gamut
ab bins on a grid of 10, the soft encoding of ab targets over their nearest bins with a
Gaussian, the class-rebalancing weights of a prior, the light dense head, the per-pixel soft
cross-entropy and the method configs' defaults.
"""
import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Linear sRGB -> XYZ for the sRGB primaries under D65; the D65 white; CIE epsilon and kappa.
RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
              (0.2126729, 0.7151522, 0.0721750),
              (0.0193339, 0.1191920, 0.9503041))
WHITE = (0.95047, 1.0, 1.08883)
EPSILON = 216.0 / 24389.0
KAPPA = 24389.0 / 27.0
AB_RANGE = 110

# The defaults of selfsup's `ColorizationConfig` / `SplitBrainConfig` that shape the step.
DEFAULTS = {"grid": 10, "neighbours": 5, "sigma": 5.0, "rebalance": True, "lambda": 0.5,
            "prior_sigma": 5.0, "target_downsample": 4, "head_width": 128, "crop": None}


def option(mc, key, default=None):
    """`mc[key]`, or `default` (else the colorization default) where it is absent."""
    if key in mc:
        return mc[key]
    return DEFAULTS.get(key) if default is None else default


def rgb_to_lab(rgb):
    """sRGB in [0, 1] `(N, 3, H, W)` -> Lab (L in [0, 100]) in f32, as per-channel sums (no
    matmul, so autocast keeps f32) as selfsup's `rgb_to_lab` computes it."""
    x = rgb.float()
    lin = torch.where(x > 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)
    r, g, b = lin[:, 0:1], lin[:, 1:2], lin[:, 2:3]

    def f(t):
        return torch.where(t > EPSILON, t.clamp_min(EPSILON) ** (1.0 / 3.0),
                           (t * KAPPA + 16.0) / 116.0)

    fx, fy, fz = (f((r * m[0] + g * m[1] + b * m[2]) / w) for m, w in zip(RGB_TO_XYZ, WHITE))
    return torch.cat([fy * 116.0 - 16.0, (fx - fy) * 500.0, (fy - fz) * 200.0], 1)


@functools.lru_cache(maxsize=None)
def in_gamut_centres(grid):
    """selfsup's `AbBins::in_gamut`: the centres `(a, b)` on the multiples of `grid` in
    [-110, 110] that are the rounded ab of some 8-bit sRGB colour, a ascending then b (261 on
    the grid of 10). Computed from all 256^3 colours, as selfsup does, once per process."""
    side = 2 * (AB_RANGE // grid) + 1
    levels = torch.arange(256, dtype=torch.float32) / 255.0
    hits = torch.zeros(side * side, dtype=torch.int64)
    with torch.no_grad():
        for r0 in range(0, 256, 16):
            r = levels[r0:r0 + 16].view(16, 1, 1, 1).expand(16, 1, 256, 256)
            g = levels.view(1, 1, 256, 1).expand(16, 1, 256, 256)
            b = levels.view(1, 1, 1, 256).expand(16, 1, 256, 256)
            lab = rgb_to_lab(torch.cat([r, g, b], 1))
            q = ((lab[:, 1:3] / grid).round().long() + AB_RANGE // grid).clamp(0, side - 1)
            hits += torch.bincount((q[:, 0] * side + q[:, 1]).flatten(), minlength=side * side)
    half = AB_RANGE // grid
    keys = torch.nonzero(hits > 0).flatten().tolist()
    return tuple(((k // side - half) * grid, (k % side - half) * grid) for k in keys)


def ab_centres(mc):
    """The ab bin centres `(Q, 2)` f32 of a method config: its `ab_bins` .npy file, else the
    in-gamut set of its `grid`."""
    if mc.get("ab_bins"):
        return torch.from_numpy(np.load(mc["ab_bins"]).astype(np.float32))
    return torch.tensor(in_gamut_centres(option(mc, "grid")), dtype=torch.float32)


def soft_encode(ab, centres, k, sigma):
    """Each target ab `(N, 2, h, w)` spread over its `k` nearest centres with weights
    `exp(-d^2 / 2 sigma^2)` normalised to 1 (Zhang et al. 2016, the paper's `H^-1_gt`; as
    richzhang/colorization's `NNEncode`, here by `topk` on the squared distances): returns
    `(N, Q, h, w)` f32."""
    n, _, h, w = ab.shape
    pts = ab.float().permute(0, 2, 3, 1).reshape(-1, 1, 2)
    d2 = (pts - centres.unsqueeze(0)).square().sum(2)  # (N*h*w, Q)
    near, idx = d2.topk(k, 1, largest=False)
    wts = torch.exp(-(near - near[:, :1]) / (2.0 * sigma * sigma))
    wts = wts / wts.sum(1, keepdim=True)
    enc = torch.zeros_like(d2).scatter_(1, idx, wts)
    return enc.view(n, h, w, -1).permute(0, 3, 1, 2).contiguous()


def rebalance_weights(prior, centres, sigma, lam):
    """Eq. 3-4 of Zhang et al. 2016 (richzhang/colorization's `PriorFactor`): the prior smoothed
    by a Gaussian of `sigma` over the bin centres, mixed with the uniform distribution
    (`lam`), inverted, and scaled so that its expectation under the smoothed prior is 1.
    Returns `(Q,)` f32."""
    p = prior.double() / prior.double().sum()
    c = centres.double()
    kernel = torch.exp(-(c.unsqueeze(1) - c.unsqueeze(0)).square().sum(2) / (2 * sigma * sigma))
    smoothed = kernel @ p
    smoothed = smoothed / smoothed.sum()
    w = 1.0 / ((1.0 - lam) * smoothed + lam / len(p))
    return (w / (w * smoothed).sum()).float()


def fixed_prior_weights(mc, centres):
    """The rebalancing weights of a fixed random prior over the bins: selfsup estimates its
    prior from the first `prior_images` training images and recomputes the weights from the
    counts at each step, which is not part of the step timed here; the weights are looked up
    per pixel in the step, as selfsup does."""
    prior = torch.rand(len(centres)) + 1e-3
    return rebalance_weights(prior, centres, option(mc, "prior_sigma"), option(mc, "lambda"))


class DenseHead(nn.Module):
    """selfsup's `DenseHead`: 1x1 conv to `width` (bias), BN, ReLU, 1x1 conv to `classes`
    (bias), and a bilinear resize to the target size where it differs."""

    def __init__(self, c_in, width, classes):
        super().__init__()
        self.hidden = nn.Conv2d(c_in, width, 1)
        self.bn = nn.BatchNorm2d(width)
        self.out = nn.Conv2d(width, classes, 1)

    def forward(self, x, size):
        y = self.out(F.relu(self.bn(self.hidden(x)), inplace=True))
        if tuple(y.shape[2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


def soft_cross_entropy(logits, targets, weights=None):
    """The per-pixel cross-entropy against soft targets `(N, Q, h, w)`, each pixel weighted by
    `weights` `(N, h, w)` where given, averaged over pixels; in f32."""
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    return (ce * weights).mean() if weights is not None else ce.mean()


def pixel_accuracy(logits, classes):
    """The fraction of pixels whose top-scoring class is the target class (a metric)."""
    with torch.no_grad():
        return (logits.argmax(1) == classes).float().mean()


def target_size(mc, side):
    d = option(mc, "target_downsample")
    return (max(side // d, 1), max(side // d, 1))
