"""MoCo (He et al. 2020; v2: Chen et al. 2020) as facebookresearch/moco's `moco/builder.py` with
its CIFAR-10 demo's one-process Shuffling BN: mirrors selfsup's `crates/moco/src/method.rs`
(`Moco::step`, `after_optimizer_step`, `Network::embed_t`), `momentum.rs`, `queue.rs` and
`crates/contrastive/src/loss.rs` (`info_nce_logits`).

The batch is what selfsup's loader delivers: two augmented views `(N, 3, 32, 32)` of the same
images (the augmentation runs in selfsup's loader threads; here both views are drawn once).
In the step, for each (query view, key view) pair (both pairs with `symmetric`):
- queries: the query network (encoder, global average pool, the head: one linear layer, or the
  v2 / `{"mlp": ...}` MLP) in one pass, every BN a `SplitBatchNorm` as the official CIFAR-10
  demo (`moco/main_moco_cifar10` notebook) writes it: the input viewed as `(N/s, s*C, ...)`,
  so each of `bn_splits` sub-batches is normalised with its own statistics, the running
  statistics set to the mean of the sub-batches' updates; L2-normalised;
- keys: the same with the momentum key network under `no_grad`, the key batch permuted by
  a uniform random permutation before and restored after (Shuffling BN on one process);
- InfoNCE in fp32 outside autocast: logits `[q.k, q.queue] / tau`, target 0, cross-entropy;
  the symmetric loss is the sum of both pairs' losses.
After the optimizer step (`after_step`): `theta_k <- m theta_k + (1 - m) theta_q` over the
parameters, then the step's keys (both pairs' with `symmetric`) are written over the oldest
rows of the `(K, dim)` queue (a buffer), wrapping around its end.
The optimizer trains the query network only (the key network has `requires_grad=False`).
Differences from selfsup's step: selfsup draws the key permutation on the host from a seeded
ChaCha stream, here `argsort(torch.rand(n))`; the demo's sub-batch k holds the samples
`i = k (mod s)` (a free view), selfsup's the k-th contiguous chunk (so that a job's ranks hold
whole sub-batches; a transposed copy in and out of each BN). The same computation in
distribution.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common


def head(c, mc):
    """selfsup's MoCo head on `c` pooled features: `head` = "linear" (or "default" with v1) is
    `nn.Linear(c, dim)`; v2's default is `Linear(c, c) -> ReLU -> Linear(c, dim)`; `{"mlp":
    {...}}` is the projection MLP with its `hidden_dim`, `bn_hidden`, `bn_out` (biases dropped
    before a BN)."""
    dim = mc.get("dim", 128)
    choice = mc.get("head", "default")
    version = mc.get("version", "v2")
    if choice == "linear" or (choice == "default" and version == "v1"):
        return nn.Linear(c, dim)
    h = choice["mlp"] if isinstance(choice, dict) else {"bn_hidden": False, "bn_out": False}
    hidden = h.get("hidden_dim") or c
    bn_hidden, bn_out = h.get("bn_hidden", True), h.get("bn_out", True)
    layers = [nn.Linear(c, hidden, bias=not bn_hidden)]
    layers += [nn.BatchNorm1d(hidden)] if bn_hidden else []
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, dim, bias=not bn_out)]
    layers += [nn.BatchNorm1d(dim)] if bn_out else []
    return nn.Sequential(*layers)


class SplitBatchNorm(nn.Module):
    """The CIFAR-10 demo's `SplitBatchNorm` over a trained `nn.BatchNorm1d/2d` `bn` (sharing its
    parameters and buffers): in training, `num_splits` sub-batches each with its own
    statistics, running statistics the mean of their updates; in evaluation, `bn`."""

    def __init__(self, bn, num_splits):
        super().__init__()
        self.bn = bn
        self.s = num_splits

    def forward(self, x):
        bn, s = self.bn, self.s
        if not self.training or x.shape[0] % s:
            return bn(x)
        n, c = x.shape[:2]
        mean = bn.running_mean.repeat(s)
        var = bn.running_var.repeat(s)
        y = F.batch_norm(x.reshape(n // s, s * c, *x.shape[2:]), mean, var, bn.weight.repeat(s),
                         bn.bias.repeat(s), True, bn.momentum, bn.eps).reshape(x.shape)
        bn.running_mean.data.copy_(mean.view(s, c).mean(0))
        bn.running_var.data.copy_(var.view(s, c).mean(0))
        return y


def split_batch_norms(module, num_splits):
    """Every BN of `module` wrapped in a `SplitBatchNorm` of `num_splits` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            setattr(module, name, SplitBatchNorm(child, num_splits))
        else:
            split_batch_norms(child, num_splits)


class Network(nn.Module):
    """Encoder, global average pool, head; L2-normalised fp32 output `(N, dim)`; every BN split
    in `splits` sub-batches in training."""

    def __init__(self, cfg, mc, splits):
        super().__init__()
        self.encoder, c = common.encoder(cfg["encoder"])
        self.head = head(c, mc)
        if splits > 1:
            split_batch_norms(self, splits)

    def forward(self, x):
        return F.normalize(self.head(self.encoder(x).mean((2, 3))).float(), dim=1)


class Moco(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        mc = cfg.get("method_config") or {}
        version = mc.get("version", "v2")
        self.m = mc.get("momentum", 0.999)
        self.t = mc.get("temperature") or (0.07 if version == "v1" else 0.2)
        self.symmetric = mc.get("symmetric", False)
        n = cfg["train"]["batch_size"]
        self.splits = max(1, min(mc.get("bn_splits", 8), n // 2))
        self.encoder_q = Network(cfg, mc, self.splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(mc.get("queue_size", 4096),
                                                              mc.get("dim", 128)), dim=1))
        self.ptr = 0
        self.pending = []

    def contrast(self, xq, xk):
        q = self.encoder_q(xq)
        with torch.no_grad():
            # A uniform permutation as `argsort(rand(n))`, not `randperm(n)`: inductor's
            # `randperm_index` pattern (torch 2.11) fails to compile a step that indexes with
            # `randperm` ("Not all inputs to pattern found in match.kwargs").
            perm = torch.argsort(torch.rand(xk.shape[0]))
            k = self.encoder_k(xk[perm])[torch.argsort(perm)]
        with common.no_autocast():
            l_pos = (q * k).sum(1, keepdim=True)
            l_neg = q @ self.queue.t()
            logits = torch.cat([l_pos, l_neg], 1) / self.t
            labels = torch.zeros(logits.shape[0], dtype=torch.long)
            return F.cross_entropy(logits, labels), k

    def loss(self, x1, x2):
        if self.symmetric:
            l12, k2 = self.contrast(x1, x2)
            l21, k1 = self.contrast(x2, x1)
            self.pending = [torch.cat([k1, k2])]
            return l12 + l21
        loss, k = self.contrast(x1, x2)
        self.pending = [k]
        return loss

    def after_step(self):
        for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            pk.mul_(self.m).add_(pq.detach(), alpha=1.0 - self.m)
        size = self.queue.shape[0]
        for keys in self.pending:
            n = keys.shape[0]
            kept = keys[-size:]
            idx = (torch.arange(kept.shape[0]) + self.ptr + n - kept.shape[0]) % size
            self.queue.index_copy_(0, idx, kept)
            self.ptr = (self.ptr + n) % size
        self.pending = []


def build(cfg, ctx):
    n = cfg["train"]["batch_size"]
    views = (common.images(ctx, n), common.images(ctx, n))
    return common.Step(cfg, ctx, Moco(cfg), views)
