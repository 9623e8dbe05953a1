"""CPC on image patches (van den Oord et al. 2018, section 3.2; CPC v2, Henaff et al. 2019):
mirrors selfsup's `crates/cpc/src/method.rs` (`Cpc::step`, `cut`, `augment`, `embed`,
`context_t`, `loss`, `info_nce`) and `crates/data/src/patches.rs` (`normalize_each`).

The batch is what selfsup's loader delivers: one view `(N, 3, crop, crop)` in [0, 1] (the
image resized to `crop` and centre-cropped in selfsup's loader threads; here drawn once). The
patches are cut in the step, as in selfsup: the `G x G` grid (`G = (crop - patch) / stride +
1`) of overlapping `patch`-pixel patches, `(N G G, 3, patch, patch)` in row-major order; with
`patch_augment` each patch is turned to grayscale with probability 0.25, its contrast scaled in
[0.6, 1.4] and its brightness shifted in [-0.2, 0.2] (drawn per patch), clamped to [0, 1]; with
`normalize_patches` each patch channel is standardised by its own mean and (unbiased) std.
Then: the encoder on every patch, global average pool, `Linear(C, context_width)` to `z`
`(N, W, G, G)`; the row-causal context network (`context_layers` residual layers `x + relu(
conv_{kernel x 3}(pad(x, 1 left, 1 right, kernel - 1 above)))`); for each row offset `k` in
`1..=steps` a bias-free `Linear(W, W)` predicts `z[i + k, j]` from `c[i, j]`, and InfoNCE
against every patch of the batch (logits `pred @ z.T`, log-softmax in fp32, NLL); the loss is
the mean over the offsets. The optimizer trains encoder, projection, context network and
predictors.

No difference from selfsup's step in the math; selfsup draws the per-patch augmentation on the
host from a seeded stream, here with `torch.rand`. The patches are not converted to
channels-last (selfsup's step does not convert them either; the convolutions follow the
weights' memory format).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common


class Cpc(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        mc = cfg.get("method_config") or {}
        self.crop = mc.get("crop", 256)
        self.patch = mc.get("patch", 64)
        self.stride = mc.get("stride", 32)
        self.grid = (self.crop - self.patch) // self.stride + 1
        self.width = mc.get("context_width", 512)
        self.kernel = mc.get("context_kernel", 2)
        self.augment = mc.get("patch_augment", True)
        self.normalize = mc.get("normalize_patches", True)
        w = self.width
        self.encoder, c = common.encoder(cfg["encoder"])
        self.project = nn.Linear(c, w)
        self.context = nn.ModuleList(nn.Conv2d(w, w, (self.kernel, 3))
                                     for _ in range(mc.get("context_layers", 3)))
        self.predict = nn.ModuleList(nn.Linear(w, w, bias=False)
                                     for _ in range(mc.get("steps", 3)))
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def patches(self, images):
        b, c = images.shape[:2]
        p, s, g = self.patch, self.stride, self.grid
        side = (g - 1) * s + p
        grid = images[:, :, :side, :side].unfold(2, p, s).unfold(3, p, s)
        x = grid.permute(0, 2, 3, 1, 4, 5).reshape(b * g * g, c, p, p)
        if self.augment:
            n = x.shape[0]
            gray = (torch.rand(n, 1, 1, 1) < 0.25).float()
            contrast = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4)
            brightness = torch.empty(n, 1, 1, 1).uniform_(-0.2, 0.2)
            if c == 3:
                luma = (x * self.luma).sum(1, keepdim=True)
                x = x * (1 - gray) + luma.expand_as(x) * gray
            mean = x.mean((1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast + mean + brightness).clamp(0, 1)
        if self.normalize:
            mean = x.mean((2, 3), keepdim=True)
            std = x.std((2, 3), keepdim=True)
            x = (x - mean) / torch.where(std != 0, std, torch.ones_like(std))
        return x

    def loss(self, images):
        b, g, w = images.shape[0], self.grid, self.width
        z = self.project(self.encoder(self.patches(images)).mean((2, 3)))
        z = z.view(b, g, g, w).permute(0, 3, 1, 2).contiguous()
        ctx = z
        for conv in self.context:
            ctx = ctx + F.relu(conv(F.pad(ctx, (1, 1, self.kernel - 1, 0))))
        candidates = z.permute(0, 2, 3, 1).reshape(b * g * g, w)
        losses = []
        for i, predictor in enumerate(self.predict):
            k = i + 1
            rows = g - k
            preds = predictor(ctx[:, :, :rows].permute(0, 2, 3, 1).reshape(b * rows * g, w))
            targets = (torch.arange(b).view(b, 1, 1) * (g * g)
                       + (torch.arange(rows).view(1, rows, 1) + k) * g
                       + torch.arange(g).view(1, 1, g)).reshape(-1)
            logits = preds @ candidates.t()
            losses.append(F.nll_loss(F.log_softmax(logits, -1, dtype=torch.float32), targets))
        return torch.stack(losses).mean()


def build(cfg, ctx):
    n = cfg["train"]["batch_size"]
    crop = (cfg.get("method_config") or {}).get("crop", 256)
    return common.Step(cfg, ctx, Cpc(cfg), (common.images(ctx, n, 3, crop),))
