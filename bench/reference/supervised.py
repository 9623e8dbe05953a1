"""The supervised baseline: the encoder, its last map averaged over space (in fp32), a linear
head to `num_classes` (PyTorch's default weights, bias zeroed), cross-entropy in fp32 against
the labels.

Mirrors selfsup's `crates/supervised/src/lib.rs` (`Supervised::step`, `logits_t`). The batch is
what selfsup's loader threads deliver: `(B, C, H, W)` images already randomly cropped, flipped
and normalised by `mean` and `std` (loader work, drawn once here: uniform images normalised
by the config's statistics) and their labels `(B,)` int64 in `0..num_classes`.

Differences from selfsup's step: selfsup also checks on the CPU that the labels lie in
`0..num_classes` (a min and a max over the B labels, read back); this step leaves that to
`F.cross_entropy`. None in the math.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common

CIFAR10_MEAN = [125.3 / 255, 123.0 / 255, 113.9 / 255]
CIFAR10_STD = [63.0 / 255, 62.1 / 255, 66.7 / 255]


class Supervised(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        mc = cfg.get("method_config") or {}
        self.encoder, c = common.encoder(cfg["encoder"])
        self.head = nn.Linear(c, mc.get("num_classes", 10))
        nn.init.zeros_(self.head.bias)

    def loss(self, x, labels):
        h = self.encoder(x).mean((2, 3), dtype=torch.float32)
        return F.cross_entropy(self.head(h).float(), labels)


def build(cfg, ctx):
    mc = cfg.get("method_config") or {}
    n = cfg["train"]["batch_size"]
    mean = torch.tensor(mc.get("mean", CIFAR10_MEAN)).view(1, -1, 1, 1)
    std = torch.tensor(mc.get("std", CIFAR10_STD)).view(1, -1, 1, 1)
    x = ((common.images(ctx, n) - mean) / std).contiguous(memory_format=ctx.fmt)
    labels = torch.randint(mc.get("num_classes", 10), (n,))
    return common.Step(cfg, ctx, Supervised(cfg), (x, labels))
