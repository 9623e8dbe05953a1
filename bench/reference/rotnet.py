"""RotNet (Gidaris et al. 2018): every image in all four rotations (`torch.rot90`), the encoder,
global average pool, a linear layer to 4 classes, cross-entropy (selfsup's `rotnet` with
`rotations: four`, the cpu profile's)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common


class RotNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.encoder, c = common.encoder(cfg["encoder"])
        self.fc = nn.Linear(c, 4)

    def loss(self, x, labels):
        xs = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
        h = self.encoder(xs).mean((2, 3))
        return F.cross_entropy(self.fc(h), labels)


def build(cfg, ctx):
    n = cfg["train"]["batch_size"]
    labels = torch.arange(4).repeat_interleave(n)
    return common.Step(cfg, ctx, RotNet(cfg), (common.images(ctx, n), labels))
