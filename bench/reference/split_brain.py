"""Split-brain autoencoders (Zhang, Isola & Efros, CVPR 2017), selfsup's `split-brain` step
(`crates/split-brain/src/{method,encoder,config}.rs`, with colorization's head and loss in
`crates/colorization/src/net.rs` and the Lab machinery of `crates/lab`).

The batch is what selfsup's loader delivers: RGB images `(N, 3, H, W)` in [0, 1] (flipped, and
cropped where `crop` is set, on the loader's threads; drawn once here). In the step: sRGB -> Lab
(no gradient); two half-width trunks of the encoder config, `l_to_ab` on `L / 50 - 1` (one
channel) and `ab_to_l` on `ab / 110` (two), each with its dense head (1x1 conv, BN, ReLU, 1x1
conv) at `1 / target_downsample` of the side. With `loss: classification` (the cpu profile's):
ab average-pooled to that size and soft-encoded over its `neighbours` nearest in-gamut ab bins
(optionally rebalanced), the soft cross-entropy of the ab head; L average-pooled and cut into
`l_bins` equal bins of [0, 100], the cross-entropy of the L head; the loss is their sum, with
both pixel accuracies as metrics. With `loss: regression`: the L2 losses on `ab / 110` and
`L / 50 - 1`. `features` only picks what evaluation sees; training is the same.

Differences from selfsup's step: with `rebalance: true` (not the cpu profile's) the weights come
from a fixed random prior computed once (selfsup counts its first training images and
recomputes the weights at each step). The L loss is `F.cross_entropy` on the L classes where
selfsup takes the soft cross-entropy against their one-hot encoding: the same value. The sample
pictures selfsup keeps are not drawn.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common, lab

WIDTH = {"alexnet": 96, "nin": 192}


def half(spec):
    """The encoder config at half its width, as selfsup's `half_config`."""
    kind = spec["kind"]
    if kind not in WIDTH:
        raise SystemExit(f"reference: split-brain cannot halve encoder `{kind}` (alexnet, nin)")
    width = spec.get("width", WIDTH[kind])
    if width < 2 or width % 2:
        raise SystemExit(f"reference: encoder.width = {width} must be even and at least 2")
    return dict(spec, width=width // 2)


class SplitBrain(nn.Module):
    def __init__(self, cfg, side):
        super().__init__()
        mc = cfg.get("method_config") or {}
        self.classification = mc.get("loss", "classification") == "classification"
        self.centres = lab.ab_centres(mc)
        self.k = lab.option(mc, "neighbours")
        self.sigma = lab.option(mc, "sigma")
        self.l_bins = mc.get("l_bins", 100)
        self.size = lab.target_size(mc, side)
        self.weights = None
        if self.classification and lab.option(mc, "rebalance", False):
            self.weights = lab.fixed_prior_weights(mc, self.centres)
        spec = half(cfg["encoder"])
        self.l_to_ab, c_l = common.encoder(spec, c_in=1)
        self.ab_to_l, c_ab = common.encoder(spec, c_in=2)
        width = lab.option(mc, "head_width")
        ab_out, l_out = (len(self.centres), self.l_bins) if self.classification else (2, 1)
        self.head_ab = lab.DenseHead(c_l, width, ab_out)
        self.head_l = lab.DenseHead(c_ab, width, l_out)

    def loss(self, rgb):
        with torch.no_grad():
            x = lab.rgb_to_lab(rgb)
            ab_t = F.adaptive_avg_pool2d(x[:, 1:3], self.size)
            l_t = F.adaptive_avg_pool2d(x[:, 0:1], self.size)
        pred_ab = self.head_ab(self.l_to_ab(x[:, 0:1] / 50.0 - 1.0), self.size)
        pred_l = self.head_l(self.ab_to_l(x[:, 1:3] / 110.0), self.size)
        if not self.classification:
            ab_loss = (pred_ab.float() - ab_t / 110.0).square().mean()
            l_loss = (pred_l.float() - (l_t / 50.0 - 1.0)).square().mean()
            return ab_loss + l_loss
        with torch.no_grad():
            targets = lab.soft_encode(ab_t, self.centres, self.k, self.sigma)
            classes = targets.argmax(1)
            w = self.weights[classes] if self.weights is not None else None
            l_classes = (l_t.squeeze(1) * (self.l_bins / 100.0)).floor() \
                .clamp(0, self.l_bins - 1).long()
        ab_loss = lab.soft_cross_entropy(pred_ab, targets, w)
        l_loss = F.cross_entropy(pred_l.float(), l_classes)
        self.ab_acc = lab.pixel_accuracy(pred_ab, classes)
        self.l_acc = lab.pixel_accuracy(pred_l, l_classes)
        return ab_loss + l_loss


def build(cfg, ctx):
    n = cfg["train"]["batch_size"]
    side = (cfg.get("method_config") or {}).get("crop") or 32
    return common.Step(cfg, ctx, SplitBrain(cfg, side), (common.images(ctx, n, 3, side),))
