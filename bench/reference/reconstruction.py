"""What the autoencoder and context-encoder reference steps share (selfsup's
`crates/reconstruction`): the up-convolution decoder, the pixel statistics both normalise with
inside their step, the trunk's feature-map shape that sizes the decoder, and the configs'
defaults.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common

# selfsup's `CIFAR10_MEAN` / `CIFAR10_STD`, the methods' default pixel statistics.
CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]
MIN_CHANNELS = 8


def batch_images(cfg, ctx):
    """The batch the loader delivers to the reconstruction methods, drawn once: `(N, C, S, S)`
    in [0, 1], `C` the channels of `method_config.mean`, `S` its `size` (32 when unset).
    Returns `(images, channels, side)`."""
    mc = cfg.get("method_config") or {}
    channels, side = len(mc.get("mean") or CIFAR10_MEAN), mc.get("size") or 32
    return common.images(ctx, cfg["train"]["batch_size"], channels, side), channels, side


def round_half_up(x):
    """Rust's `f64::round` on non-negative values (half away from zero)."""
    return int(math.floor(x + 0.5))


def pixel_stats(mc):
    """The per-channel `(mean, std)` of a method config, `(1, C, 1, 1)` each."""
    mean = torch.tensor(mc.get("mean") or CIFAR10_MEAN, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(mc.get("std") or CIFAR10_STD, dtype=torch.float32).view(1, -1, 1, 1)
    return mean, std


def feature_shape(encoder, channels, side):
    """`(C, h, w)` of the trunk's last feature map for `side`-pixel images: one eval-mode pass
    of a zero image without gradient, as selfsup's `feature_shape`."""
    encoder.eval()
    with torch.no_grad():
        shape = encoder(torch.zeros(1, channels, side, side)).shape[1:]
    encoder.train()
    return tuple(shape)


class UpDecoder(nn.Module):
    """selfsup's `UpDecoder` (DCGAN's generator as the context encoder's official code builds
    it): `ups` blocks of ConvTranspose2d 4x4 stride 2 pad 1 (no bias), BN, ReLU, with `width`
    channels in the first and half as many in each next (at least 8); a bilinear resize where
    the doublings miss the image size; a 3x3 conv (bias) to the image channels. Weights normal
    with std 0.02."""

    def __init__(self, c_in, c_out, width, ups):
        super().__init__()
        layers = []
        for i in range(ups):
            c = max(width >> i, MIN_CHANNELS)
            layers += [nn.ConvTranspose2d(c_in, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            c_in = c
        self.ups = nn.Sequential(*layers)
        self.out = nn.Conv2d(c_in, c_out, 3, padding=1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def default_width(c):
        return max(c // 2, MIN_CHANNELS)

    @staticmethod
    def ups_for(feature_side, image_side):
        return max(round_half_up(math.log2(image_side / max(feature_side, 1))), 0)

    def forward(self, x, size):
        h = self.ups(x)
        if tuple(h.shape[2:]) != tuple(size):
            h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        return self.out(h)


def decoder_for(encoder, mc, channels, side):
    """The decoder selfsup builds for `encoder` on `side`-pixel images, and the feature shape."""
    c, h, w = feature_shape(encoder, channels, side)
    width = mc.get("decoder_width") or UpDecoder.default_width(c)
    return UpDecoder(c, channels, width, UpDecoder.ups_for(h, side)), (c, h, w)
