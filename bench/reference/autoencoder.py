"""The denoising autoencoder (Vincent et al., ICML 2008), selfsup's `autoencoder` step
(`crates/autoencoder/src/method.rs`, `config.rs`; the decoder of
`crates/reconstruction/src/decoder.rs`; the corruptions of `crates/data/src/masks.rs`).

The batch is what selfsup's loader delivers: clean images `(N, C, H, W)` in [0, 1] (resized and
flipped where configured, on the loader's threads; drawn once here). In the step: the
corruption of `method_config.corruption` drawn for this step (masking noise: exactly
`round(fraction * C*H*W)` elements of each image set to 0; also gaussian and salt-and-pepper),
clean and corrupted images normalised with the config's mean and std, the trunk and the
up-convolution decoder on the corrupted image, the mean squared error to the clean one in f32;
the error of handing back the corrupted input (`identity_mse`) as the step's metric.

Differences from selfsup's step: the corruption is drawn from torch's generator with tensor ops
(`rand` + `topk` for the exact count per image) where selfsup draws the same distribution from
its seeded ChaCha stream on the host. The grid of samples selfsup keeps is not drawn.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common
from .reconstruction import batch_images, decoder_for, pixel_stats, round_half_up


def exactly(n, d, k):
    """`(n, d)` bool, `k` True per row at uniformly random places."""
    idx = torch.rand(n, d).topk(k, 1).indices
    return torch.zeros(n, d, dtype=torch.bool).scatter_(1, idx, True)


def corrupt(x, c):
    """selfsup's `corrupt` of images `x` in [0, 1] by the config object `c`."""
    kind = c.get("kind", "masking_noise")
    n, d = x.shape[0], x[0].numel()
    if kind == "masking_noise":
        k = round_half_up(c.get("fraction", 0.25) * d)
        return x.masked_fill(exactly(n, d, k).view(x.shape), 0.0)
    if kind == "gaussian":
        return x + torch.randn_like(x) * c.get("std", 0.1)
    if kind == "salt_and_pepper":
        k = round_half_up(c.get("fraction", 0.25) * d)
        hit = exactly(n, d, k).view(x.shape)
        salt = torch.rand(x.shape) < 0.5
        return torch.where(hit, salt.to(x.dtype), x)
    raise SystemExit(f"reference: corruption `{kind}` (masking_noise, gaussian, salt_and_pepper)")


class Autoencoder(nn.Module):
    def __init__(self, cfg, channels, side):
        super().__init__()
        mc = cfg.get("method_config") or {}
        self.corruption = mc.get("corruption") or {"kind": "masking_noise", "fraction": 0.25}
        mean, std = pixel_stats(mc)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.encoder, _ = common.encoder(cfg["encoder"], c_in=channels)
        self.decoder, _ = decoder_for(self.encoder, mc, channels, side)

    def loss(self, images):
        corrupted = corrupt(images, self.corruption)
        x = (images - self.mean) / self.std
        noisy = (corrupted - self.mean) / self.std
        pred = self.decoder(self.encoder(noisy), x.shape[2:])
        loss = F.mse_loss(pred.float(), x.float())
        with torch.no_grad():
            self.identity_mse = F.mse_loss(noisy.float(), x.float())
        return loss


def build(cfg, ctx):
    images, channels, side = batch_images(cfg, ctx)
    net = Autoencoder(cfg, channels, side)
    return common.Step(cfg, ctx, net, (images,))
