"""Relative patch location (Doersch, Gupta & Efros 2015), the late-fusion pair network: the
centre patch and its neighbour through the shared trunk as one batch, the last map max-pooled
to `pool5 × pool5` and flattened, a shared `fc6` (ReLU, dropout), the two `fc6` outputs
concatenated, `fc7` (ReLU, dropout), `fc8` to the 8 neighbour positions, cross-entropy in fp32.

Mirrors selfsup's `crates/relative-patch/src/method.rs` (`RelativePatch::step`, `logits_t`)
and `crates/relative-patch/src/pairs.rs` (`make_pairs`, `pixelate`, `drop_colors`,
`project_green_magenta`, `normalize_patch`). The batch is what selfsup's loader threads
deliver: `(B, C, crop, crop)` crops in [0, 1] (resize and centre crop are loader work, drawn
once here). Making the pairs is in-step work in selfsup and stays in the step here, vectorised
over the batch: a 3×3 grid of `patch`-pixel patches with `gap` and per-patch `jitter` at a
random place in the crop, the centre patch and one of its eight neighbours (the label); then
each patch, in the official `prep_image` order: pixelated with probability `downsample_p`
(antialiased bilinear down to a random side, bilinear back up), the colour countermeasure
(`drop`: one random channel kept, the others Gaussian noise at `noise_fraction` of its
standard deviation around its mean; `project`: the green-magenta component removed), and
normalised (channels centred, divided by the patch's root mean square).

Differences from selfsup's step: none in the math. Random draws come from torch's generator
(selfsup draws them, the dropped channels' noise included, from a ChaCha stream on the host),
and selfsup prepares the patches one by one, this step all at once (pixelation in one resize
pair per distinct side).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common


def downsample_sides(p):
    """The range of sides a `p`-pixel patch is pixelated to (official: 10..95 at 96)."""
    lo = max((10 * p + 48) // 96, 2)
    return max(min(lo, max(p - 1, 0)), 1), max(p - 1, 1)


class RelativePatch(nn.Module):
    def __init__(self, cfg, fmt):
        super().__init__()
        mc = cfg.get("method_config") or {}
        self.patch = mc.get("patch", 96)
        self.gap = mc.get("gap", 48)
        self.jitter = mc.get("jitter", 7)
        self.random_grid = mc.get("random_grid", True)
        self.color = mc.get("color", "drop")
        self.downsample_p = mc.get("downsample_p", 0.33)
        self.noise_fraction = mc.get("noise_fraction", 0.01)
        self.normalize_patches = mc.get("normalize_patches", True)
        self.pool5 = mc.get("pool5", 2)
        fc6, fc7 = mc.get("fc6", 4096), mc.get("fc7", 4096)
        dropout = mc.get("dropout", 0.5)
        self.fmt = fmt
        self.encoder, c = common.encoder(cfg["encoder"])
        self.fc6 = nn.Sequential(nn.Linear(c * self.pool5 ** 2, fc6), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))
        self.fc7 = nn.Sequential(nn.Linear(2 * fc6, fc7), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))
        self.fc8 = nn.Linear(fc7, 8)

    def pairs(self, x):
        """Centre patches then neighbours, `(2B, C, P, P)`, and labels `(B,)`."""
        b, _, h, w = x.shape
        p, j = self.patch, self.jitter
        extent = 3 * p + 2 * self.gap + 2 * j
        if self.random_grid:
            oy = torch.randint(h - extent + 1, (b, 1))
            ox = torch.randint(w - extent + 1, (b, 1))
        else:
            oy, ox = (h - extent) // 2, (w - extent) // 2
        labels = torch.randint(8, (b,))
        cells = torch.stack([torch.full((b,), 4), labels + (labels >= 4).long()], 1)  # (B, 2)
        step = p + self.gap
        ys = oy + j + cells.div(3, rounding_mode="floor") * step
        xs = ox + j + cells.remainder(3) * step
        if j:
            ys = ys + torch.randint(-j, j + 1, (b, 2))
            xs = xs + torch.randint(-j, j + 1, (b, 2))
        patches = common.cut(x, ys, xs, p).transpose(0, 1).flatten(0, 1)  # first B, then B
        n = patches.shape[0]
        if self.downsample_p > 0:
            lo, hi = downsample_sides(p)
            hit = torch.rand(n) < self.downsample_p
            sides = (torch.rand(n, dtype=torch.float64) * (hi * hi - lo * lo) + lo * lo).sqrt()
            sides = torch.where(hit, sides.long().clamp(lo, hi), 0)
            for s in sides.unique().tolist():
                if s:
                    i = (sides == s).nonzero().squeeze(1)
                    down = F.interpolate(patches[i], size=(s, s), mode="bilinear",
                                         align_corners=False, antialias=True)
                    patches[i] = F.interpolate(down, size=(p, p), mode="bilinear",
                                               align_corners=False)
        if self.color == "drop":
            keep = torch.randint(3, (n,))
            kept = patches[torch.arange(n), keep].unsqueeze(1)  # (N, 1, P, P)
            std, mean = torch.std_mean(kept, (1, 2, 3), keepdim=True)
            noise = torch.randn_like(patches) * (std * self.noise_fraction) + mean
            mask = (torch.arange(3) == keep.unsqueeze(1)).view(n, 3, 1, 1)
            patches = torch.where(mask, patches, noise)
        elif self.color == "project":
            a = torch.tensor([-1.0, 2.0, -1.0]).view(1, 3, 1, 1) / math.sqrt(6)
            patches = patches - (patches * a).sum(1, keepdim=True) * a
        if self.normalize_patches:
            centred = patches - patches.mean((2, 3), keepdim=True)
            rms = centred.square().mean((1, 2, 3), keepdim=True).sqrt()
            patches = centred / torch.where(rms > 0, rms, 1.0)
        return patches.contiguous(memory_format=self.fmt), labels

    def loss(self, x):
        patches, labels = self.pairs(x)
        h = F.adaptive_max_pool2d(self.encoder(patches), self.pool5)
        first, second = self.fc6(h.flatten(1)).chunk(2)
        h = self.fc7(torch.cat([first, second], 1))
        return F.cross_entropy(self.fc8(h).float(), labels)


def build(cfg, ctx):
    mc = cfg.get("method_config") or {}
    n = cfg["train"]["batch_size"]
    crop = mc.get("crop", 400)
    net = RelativePatch(cfg, ctx.fmt)
    return common.Step(cfg, ctx, net, (common.images(ctx, n, 3, crop),))
