"""Context encoders (Pathak et al., CVPR 2016), selfsup's `context-encoder` step
(`crates/context-encoder/src/{method,bottleneck,discriminator,config}.rs`, the decoder of
`crates/reconstruction/src/decoder.rs`, the masks of `crates/data/src/masks.rs`, and the
trainer's extra-optimizer step in `crates/core/src/trainer.rs`).

The batch is what selfsup's loader delivers: images `(N, C, H, W)` in [0, 1] (flipped, and
resized where `size` is set, on the loader's threads; drawn once here). One call is selfsup's
whole step, both updates:
- the step's masks `(N, 1, H, W)` (1 = hidden), drawn in the step: `random_regions` (uniform
  noise on a `cells x cells` grid, upsampled bicubically, its `coverage` quantile hidden: exactly
  `round(coverage * H*W)` pixels), `central` or `random_blocks`;
- the image normalised with the config's mean and std, the hidden pixels set to 0 (the mean);
  loss weights 1 in the hole, `overlap_weight` in the `overlap`-pixel border around it (a max-pool
  dilation), 0 elsewhere;
- the generator (the trunk, the channel-wise fully connected bottleneck with its 1x1 conv, the
  up-convolution decoder) under autocast; `L_rec = sum(W * (pred - x)^2) / (C * #{W > 0})`; the
  fake image, `x` with the prediction pasted into hole and border; `L_adv = -log D(fake)` (D's
  variables held constant: no gradients for them from this loss); the loss
  `lambda_rec * L_rec + lambda_adv * L_adv`, backward, the run's optimizer over the generator's
  parameters;
- the discriminator (DCGAN's: 4x4 stride-2 convs, BN without running statistics after all but
  the first, LeakyReLU 0.2, a conv to one logit) under autocast on the real image and the
  detached fake, `-log D(x) - log(1 - D(fake))`, backward, its own optimizer
  (`discriminator_optimizer`).
`rec_loss` and `adv_loss` are kept as the step's metrics. Without `adversarial` the loss is
`L_rec` alone and there is no discriminator.

Differences from selfsup's step: the masks are drawn from torch's generator as batched tensor
ops where selfsup draws each image's noise from its seeded ChaCha stream on the host (the same
distribution); the cosine schedule of the learning rates is not applied (the examples apply
none); the grid of samples selfsup keeps is not drawn.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common
from .reconstruction import batch_images, decoder_for, pixel_stats, round_half_up

DISCRIMINATOR_OPTIMIZER = {"kind": "adamw", "lr": 2e-4, "beta1": 0.5, "beta2": 0.999,
                           "eps": 1e-8, "weight_decay": 0.0}


def draw_masks(spec, n, h, w):
    """`n` masks `(n, 1, h, w)` f32 of selfsup's `MaskConfig` `spec`, 1 where hidden."""
    kind = spec.get("kind", "central")
    if kind == "random_regions":
        coverage, cells = spec.get("coverage", 0.25), spec.get("cells", 8)
        short = min(h, w)
        gh = max(round_half_up(cells * h / short), 1)
        gw = max(round_half_up(cells * w / short), 1)
        field = F.interpolate(torch.rand(n, 1, gh, gw), size=(h, w), mode="bicubic",
                              align_corners=False).flatten(1)
        k = min(max(round_half_up(coverage * h * w), 1), h * w - 1)
        idx = field.topk(k, 1, largest=False).indices
        return torch.zeros(n, h * w).scatter_(1, idx, 1.0).view(n, 1, h, w)
    masks = torch.zeros(n, 1, h, w)
    if kind == "central":
        s = min(round_half_up(min(h, w) * spec.get("fraction", 0.5)), min(h, w))
        top, left = (h - s) // 2, (w - s) // 2
        masks[:, :, top:top + s, left:left + s] = 1.0
        return masks
    if kind == "random_blocks":
        s = min(h, w)
        lo = min(max(round_half_up(spec.get("min_side", 0.125) * s), 1), s)
        hi = min(max(round_half_up(spec.get("max_side", 0.25) * s), lo), s)
        target = math.ceil(spec.get("coverage", 0.25) * h * w)
        for i in range(n):
            m = masks[i, 0]
            while m.sum() < target:
                bh, bw = torch.randint(lo, hi + 1, (2,)).tolist()
                top = torch.randint(0, h - bh + 1, ()).item()
                left = torch.randint(0, w - bw + 1, ()).item()
                m[top:top + bh, left:left + bw] = 1.0
        return masks
    raise SystemExit(f"reference: mask `{kind}` (central, random_blocks, random_regions)")


class ChannelwiseFc(nn.Module):
    """The channel-wise fully connected layer (one `hw x hw` layer per channel) and ReLU, then
    a 1x1 conv and ReLU."""

    def __init__(self, c, h, w):
        super().__init__()
        hw, bound = h * w, 1.0 / math.sqrt(h * w)
        self.weight = nn.Parameter(torch.empty(c, hw, hw).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(c, hw).uniform_(-bound, bound))
        self.mix = nn.Conv2d(c, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        # One (n, hw) x (hw, hw) product per channel, as selfsup's (the broadcast
        # `x.reshape(n, c, 1, hw) @ weight` copies the weight n times: 132 against 9 ms
        # forward and backward at the cpu profile's (128, 64, 8, 8), Zen 3).
        y = torch.bmm(x.reshape(n, c, h * w).transpose(0, 1), self.weight).transpose(0, 1)
        y = F.relu(y + self.bias).reshape(n, c, h, w)
        return F.relu(self.mix(y))


class Discriminator(nn.Module):
    def __init__(self, c_in, side, width):
        super().__init__()
        layers, i, s = [], 0, side
        while s > 4:
            c = width * (1 << min(i, 3))
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(c, track_running_stats=False))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in, i, s = c, i + 1, s // 2
        layers.append(nn.Conv2d(c_in, 1, max(s, 1), bias=False))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x):
        return self.net(x).reshape(x.shape[0])


class ContextEncoder(nn.Module):
    def __init__(self, cfg, channels, side):
        super().__init__()
        mc = cfg.get("method_config") or {}
        self.mask = mc.get("mask") or {"kind": "central", "fraction": 0.5}
        overlap = mc.get("overlap")
        self.overlap = max(round_half_up(side / 32), 1) if overlap is None else overlap
        self.overlap_weight = mc.get("overlap_weight", 10.0)
        self.lambda_rec = mc.get("lambda_rec", 0.999)
        self.lambda_adv = mc.get("lambda_adv", 0.001)
        mean, std = pixel_stats(mc)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.encoder, _ = common.encoder(cfg["encoder"], c_in=channels)
        self.decoder, shape = decoder_for(self.encoder, mc, channels, side)
        self.bottleneck = ChannelwiseFc(*shape) if mc.get("bottleneck", True) else None
        self.discriminator = None
        if mc.get("adversarial", True):
            self.discriminator = Discriminator(channels, side, mc.get("discriminator_width", 64))

    def generator_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]

    def generator_loss(self, images):
        """The generator's loss, and the real and fake images for the discriminator's step."""
        n, c, h, w = images.shape
        masks = draw_masks(self.mask, n, h, w)
        x = (images - self.mean) / self.std
        inp = x.masked_fill(masks > 0.5, 0.0)
        r = self.overlap
        border = F.max_pool2d(masks, 2 * r + 1, 1, r) - masks
        weights = masks + border * self.overlap_weight
        feats = self.encoder(inp)
        if self.bottleneck is not None:
            feats = self.bottleneck(feats)
        pred = self.decoder(feats, (h, w))
        counted = (weights > 0).sum().clamp_min(1) * c
        rec = ((pred.float() - x.float()).square() * weights).sum() / counted
        self.rec_loss = rec.detach()
        if self.discriminator is None:
            return rec, None, None
        fake = torch.where((weights > 0).expand_as(x), pred.to(x.dtype), x)
        # The discriminator's variables held constant, as selfsup's `forward_frozen` (and
        # pix2pix's `set_requires_grad(netD, False)`): the backward computes no gradients for
        # them, which the discriminator's step would discard.
        params = list(self.discriminator.parameters())
        for p in params:
            p.requires_grad_(False)
        logit = self.discriminator(fake).float()
        for p in params:
            p.requires_grad_(True)
        adv = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
        self.adv_loss = adv.detach()
        return self.lambda_rec * rec + self.lambda_adv * adv, x.detach(), fake.detach()

    def discriminator_loss(self, real, fake):
        d_real = self.discriminator(real).float()
        d_fake = self.discriminator(fake).float()
        return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


class Step:
    """The generator's update with the run's optimizer, then the discriminator's with its own,
    each forward pass under autocast."""

    def __init__(self, cfg, ctx, net, images):
        self.net = net.to(memory_format=ctx.fmt)
        self.net.train()
        self.ctx = ctx
        self.images = images
        self.opt_g = common.optimizer(cfg["train"]["optimizer"], net.generator_parameters(),
                                      ctx.fused)
        self.opts = [self.opt_g]
        self.opt_d = None
        if net.discriminator is not None:
            spec = (cfg.get("method_config") or {}).get("discriminator_optimizer") \
                or DISCRIMINATOR_OPTIMIZER
            self.opt_d = common.optimizer(spec, net.discriminator.parameters(), ctx.fused)
            self.opts.append(self.opt_d)
        self.generator_loss = ctx.compile(self.net.generator_loss)
        self.discriminator_loss = ctx.compile(self.net.discriminator_loss)

    def __call__(self):
        self.opt_g.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            loss, real, fake = self.generator_loss(self.images)
        loss.backward()
        self.opt_g.step()
        if self.opt_d is not None:
            self.opt_d.zero_grad(set_to_none=True)
            with self.ctx.autocast():
                d_loss = self.discriminator_loss(real, fake)
            d_loss.backward()
            self.opt_d.step()
            self.d_loss = d_loss.detach()
        return loss


def build(cfg, ctx):
    images, channels, side = batch_images(cfg, ctx)
    net = ContextEncoder(cfg, channels, side)
    return Step(cfg, ctx, net, images)
