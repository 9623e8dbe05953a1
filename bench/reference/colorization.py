"""Colorization (Zhang, Isola & Efros, ECCV 2016), selfsup's `colorization` step
(`crates/colorization/src/method.rs`, `net.rs`; `crates/lab/src/{color,quant,rebalance}.rs`),
written as richzhang/colorization's PyTorch training code does it.

The batch is what selfsup's loader delivers: RGB images `(N, 3, H, W)` in [0, 1] (flipped, and
cropped where `crop` is set, on the loader's threads; drawn once here). In the step: sRGB -> Lab;
the ab targets average-pooled to `1 / target_downsample` of the side and soft-encoded over
their `neighbours` nearest in-gamut ab bins with a Gaussian of `sigma` (no gradient); each
pixel's rebalancing weight looked up by its nearest bin; the one-channel trunk on `L / 50 - 1`,
the dense head (1x1 conv, BN, ReLU, 1x1 conv to the Q bins, resized to the target size); the
weighted soft cross-entropy; the pixel accuracy as the step's metric.

Differences from selfsup's step: the rebalancing weights come from a fixed random prior,
computed once when the step is built. selfsup counts the bins of its first `prior_images`
training images into a running prior and recomputes the Q weights from those counts on the
host at every step; estimating the prior is not part of the step this compares (richzhang's
code loads a precomputed prior too). The grid of sample pictures selfsup keeps is not drawn.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common, lab


class Colorization(nn.Module):
    def __init__(self, cfg, side):
        super().__init__()
        mc = cfg.get("method_config") or {}
        self.centres = lab.ab_centres(mc)
        self.k = lab.option(mc, "neighbours")
        self.sigma = lab.option(mc, "sigma")
        self.size = lab.target_size(mc, side)
        self.weights = lab.fixed_prior_weights(mc, self.centres) if lab.option(mc, "rebalance") \
            else None
        self.encoder, c = common.encoder(cfg["encoder"], c_in=1)
        self.head = lab.DenseHead(c, lab.option(mc, "head_width"), len(self.centres))

    def loss(self, rgb):
        with torch.no_grad():
            x = lab.rgb_to_lab(rgb)
            ab = F.adaptive_avg_pool2d(x[:, 1:3], self.size)
            targets = lab.soft_encode(ab, self.centres, self.k, self.sigma)
            classes = targets.argmax(1)
            w = self.weights[classes] if self.weights is not None else None
        logits = self.head(self.encoder(x[:, 0:1] / 50.0 - 1.0), self.size)
        loss = lab.soft_cross_entropy(logits, targets, w)
        self.ab_acc = lab.pixel_accuracy(logits, classes)
        return loss


def build(cfg, ctx):
    n = cfg["train"]["batch_size"]
    side = lab.option(cfg.get("method_config") or {}, "crop") or 32
    return common.Step(cfg, ctx, Colorization(cfg, side), (common.images(ctx, n, 3, side),))
