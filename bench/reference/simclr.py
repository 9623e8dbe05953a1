"""SimCLR (Chen et al. 2020): each of two views through the encoder on its own, global average
pool, the projection head `Linear(C, C, bias=False) -> BN -> ReLU -> Linear(C, 128,
bias=False) -> BN` (selfsup's default head, `bn_hidden` and `bn_out`), NT-Xent over the 2N
embeddings at the config's temperature, computed in fp32 outside autocast."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common


class SimClr(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.encoder, c = common.encoder(cfg["encoder"])
        mc = cfg.get("method_config") or {}
        head = mc.get("head") or {}
        hidden = head.get("hidden_dim") or c
        out = head.get("out_dim") or 128
        self.head = nn.Sequential(nn.Linear(c, hidden, bias=False), nn.BatchNorm1d(hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, out, bias=False),
                                  nn.BatchNorm1d(out))
        self.t = mc.get("temperature", 0.5)

    def embed(self, x):
        return self.head(self.encoder(x).mean((2, 3)))

    def loss(self, x1, x2):
        h = torch.cat([self.embed(x1), self.embed(x2)])
        # The similarities in fp32 outside autocast, as selfsup's `nt_xent_logits`.
        with common.no_autocast():
            z = F.normalize(h.float(), dim=1)
            n = z.shape[0] // 2
            sim = z @ z.t() / self.t
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(sim, targets)


def build(cfg, ctx):
    n = cfg["train"]["batch_size"]
    views = (common.images(ctx, n), common.images(ctx, n))
    return common.Step(cfg, ctx, SimClr(cfg), views)
