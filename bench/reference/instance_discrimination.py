"""Instance discrimination (Wu et al. 2018) as zhirongw/lemniscate.pytorch (`lib/LinearAverage.py`
for the softmax objective, `lib/NCEAverage.py` and `lib/NCECriterion.py` for NCE): mirrors
selfsup's `crates/instance-discrimination/src/method.rs` (`InstanceDiscrimination::step`,
`loss`, `after_optimizer_step`) and `memory.rs` (`MemoryBank`, `nce_loss`).

The batch is what selfsup's loader delivers: one augmented view `(N, 3, 32, 32)` and the
images' dataset indices `(N,)` (distinct; the augmentation runs in selfsup's loader threads,
here the batch is drawn once). In the step: the encoder, global average pool, `nn.Linear(C,
dim)`, `BatchNorm1d(dim)` with `head_bn`, L2 normalisation; then, in fp32 outside autocast,
the `softmax` objective's cross-entropy of `v @ bank.T / tau` against the own index, or
`nce`'s scores `exp(v . bank[c] / tau)` of the own index and `nce_k` uniform noise indices,
divided by Z (estimated once, from the first batch, as `N * mean`) and lemniscate's NCE loss.
After the optimizer step (`after_step`) the bank rows of the batch become
`normalise(m * row + (1 - m) * v)` with the step's (detached) features.
The optimizer trains the encoder, the head and `head_bn`; the bank is a buffer.

The bank has one row per training image: `data.max_images` of the config (else 50,000, the
CIFAR-10 train split), the bank of the training run the config describes. No difference from
selfsup's step in the math.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common


class InstDisc(nn.Module):
    def __init__(self, cfg, n_data):
        super().__init__()
        mc = cfg.get("method_config") or {}
        dim = mc.get("dim", 128)
        self.t = mc.get("temperature", 0.07)
        self.m = mc.get("bank_momentum", 0.5)
        self.objective = mc.get("objective", "nce")
        self.nce_k = mc.get("nce_k", 4096)
        self.encoder, c = common.encoder(cfg["encoder"])
        self.head = nn.Linear(c, dim)
        self.head_bn = nn.BatchNorm1d(dim) if mc.get("head_bn", False) else nn.Identity()
        stdv = 1.0 / (dim / 3) ** 0.5
        self.register_buffer("memory", F.normalize(torch.rand(n_data, dim) * 2 * stdv - stdv))
        self.z = None
        self.pending = None

    def loss(self, x, idx):
        v = F.normalize(self.head_bn(self.head(self.encoder(x).mean((2, 3)))).float(), dim=1)
        self.pending = (idx, v.detach())
        with common.no_autocast():
            if self.objective == "softmax":
                return F.cross_entropy(v @ self.memory.t() / self.t, idx)
            n, b, k = self.memory.shape[0], v.shape[0], self.nce_k
            noise = torch.randint(0, n, (b, k))
            candidates = torch.cat([idx[:, None], noise], 1)
            weights = self.memory[candidates.view(-1)].view(b, k + 1, -1)
            scores = torch.exp(torch.bmm(weights, v[:, :, None]).squeeze(2) / self.t)
            if self.z is None:
                self.z = scores.mean().item() * n
            scores = scores / self.z
            kpn, eps = k / n, 1e-7
            ln_pmt = torch.log(scores[:, 0] / (scores[:, 0] + kpn + eps))
            ln_pon = torch.log(kpn / (scores[:, 1:] + kpn + eps))
            return -(ln_pmt.sum() + ln_pon.sum()) / b

    def after_step(self):
        idx, v = self.pending
        rows = self.memory.index_select(0, idx) * self.m + v * (1.0 - self.m)
        self.memory.index_copy_(0, idx, F.normalize(rows, dim=1))
        self.pending = None


def build(cfg, ctx):
    n = cfg["train"]["batch_size"]
    n_data = (cfg.get("data") or {}).get("max_images") or 50000
    idx = torch.randperm(n_data)[:n]
    return common.Step(cfg, ctx, InstDisc(cfg, n_data), (common.images(ctx, n), idx))
