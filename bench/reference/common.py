"""What every reference step shares: selfsup's encoders in PyTorch, the optimizer of a selfsup
config, the batch drawn once, and the plain step (zero grad, forward under autocast, backward,
optimizer step).

A method module (`reference/<method with _ for ->.py`) defines `build(cfg, ctx)` returning a
callable that runs one whole training step. `cfg` is the selfsup config (the JSON file
`selfsup train --config` runs); `ctx` carries `fmt` (the memory format), `bf16` (autocast on)
and `fused` (the optimizers' `fused=True`). Written as a PyTorch user would write each method,
with the same networks, shapes and losses as selfsup's crates.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# The device type the steps run on: "cpu", or "cuda" where `train_step.py --device cuda` made
# CUDA torch's default device (every tensor and module the references create lands there).
DEVICE_TYPE = "cpu"


def no_autocast():
    """Autocast off, for the parts a method computes in fp32 (similarities, logits)."""
    return torch.autocast(DEVICE_TYPE, enabled=False)


class Ctx:
    """How the step runs: memory format, autocast, fused optimizers, and whether the loss
    (forward, and through AOTAutograd its backward) is compiled with `torch.compile`."""

    def __init__(self, channels_last, bf16, fused, compiled=False):
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.bf16 = bf16
        self.fused = fused
        self.compiled = compiled

    def compile(self, f):
        """`f` compiled by `torch.compile` (inductor's defaults) when the run asks for it."""
        return torch.compile(f) if self.compiled else f

    def autocast(self):
        return torch.autocast(DEVICE_TYPE, dtype=torch.bfloat16, enabled=self.bf16)


def conv_bn_relu(i, o, k, stride=1, pad=None):
    return [nn.Conv2d(i, o, k, stride, k // 2 if pad is None else pad, bias=False),
            nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


def nin(blocks, w, c_in=3):
    """selfsup's `nin` encoder: `(w, round(5w/6), round(w/2))` in block 1, rounded half up."""
    w2, w3 = (w * 5 + 3) // 6, (w + 1) // 2
    layers = conv_bn_relu(c_in, w, 5) + conv_bn_relu(w, w2, 1) + conv_bn_relu(w2, w3, 1)
    layers += [nn.MaxPool2d(3, 2, 1)]
    layers += conv_bn_relu(w3, w, 5) + conv_bn_relu(w, w, 1) + conv_bn_relu(w, w, 1)
    layers += [nn.AvgPool2d(3, 2, 1)]
    for _ in range(blocks - 2):
        layers += conv_bn_relu(w, w, 3) + conv_bn_relu(w, w, 1) + conv_bn_relu(w, w, 1)
    return nn.Sequential(*layers), w


def alexnet(variant, width, c_in=3):
    """selfsup's `alexnet` encoder (BN after every conv, no bias, taps before pooling): conv1
    11x11/4 pad 2 (`imagenet`) or 5x5/1 pad 2 (`cifar`), max-pool 3x3/2 (pad 1 for `cifar`)
    before conv2 and conv3, conv2 5x5 pad 2, conv3..5 3x3 pad 1; channels AlexNet's
    (96, 256, 384, 384, 256) scaled by width / 96, rounded."""
    cs = [max(1, (c * width + 48) // 96) for c in (96, 256, 384, 384, 256)]
    k1, s1, p1 = (5, 1, 2) if variant == "cifar" else (11, 4, 2)
    pool_pad = 1 if variant == "cifar" else 0
    spec = [(k1, s1, p1), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)]
    layers, c = [], c_in
    for i, ((k, s, p), o) in enumerate(zip(spec, cs)):
        if i in (1, 2):
            layers.append(nn.MaxPool2d(3, 2, pool_pad))
        layers += conv_bn_relu(c, o, k, s, p)
        c = o
    return nn.Sequential(*layers), cs[4]


class Basic(nn.Module):
    def __init__(self, i, o, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.down = None
        if stride != 1 or i != o:
            self.down = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


def resnet18(stem, c_in=3):
    """torchvision's ResNet-18 without avgpool and fc, with the `cifar` or `imagenet` stem."""
    if stem == "cifar":
        layers = conv_bn_relu(c_in, 64, 3)
    else:
        layers = conv_bn_relu(c_in, 64, 7, 2, 3) + [nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, o in enumerate([64, 128, 256, 512]):
        s = 1 if i == 0 else 2
        layers += [Basic(c, o, s), Basic(o, o, 1)]
        c = o
    return nn.Sequential(*layers), 512


def encoder(spec, c_in=3):
    """The encoder of a selfsup `encoder` config object: `(module, output channels)`; the
    module maps `(N, c_in, H, W)` to the last feature map `(N, C, h, w)`."""
    kind = spec["kind"]
    if kind == "nin":
        return nin(spec.get("blocks", 4), spec.get("width", 192), c_in)
    if kind == "alexnet":
        return alexnet(spec.get("variant", "imagenet"), spec.get("width", 96), c_in)
    if kind == "resnet18":
        return resnet18(spec.get("stem", "imagenet"), c_in)
    raise SystemExit(f"reference: encoder kind `{kind}` has no PyTorch version here "
                     "(nin, alexnet, resnet18)")


def optimizer(opt, params, fused):
    """`torch.optim` for selfsup's `train.optimizer` object (sgd or adamw) over `params`."""
    params = [p for p in params if p.requires_grad]
    if opt["kind"] == "sgd":
        if opt.get("exclude_bias_and_norm"):
            decay = [p for p in params if p.dim() > 1]
            rest = [p for p in params if p.dim() <= 1]
            params = [{"params": decay}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.SGD(params, lr=opt["lr"], momentum=opt.get("momentum", 0.9),
                               nesterov=opt.get("nesterov", False),
                               weight_decay=opt.get("weight_decay", 0.0), fused=fused or None)
    if opt["kind"] == "adamw":
        return torch.optim.AdamW(params, lr=opt["lr"],
                                 betas=(opt.get("beta1", 0.9), opt.get("beta2", 0.999)),
                                 eps=opt.get("eps", 1e-8), weight_decay=opt.get("weight_decay", 0.01),
                                 fused=fused or None)
    raise SystemExit(f"reference: optimizer kind `{opt['kind']}` has no PyTorch version here "
                     "(sgd, adamw)")


def images(ctx, n, c=3, size=32):
    """A batch of `n` images `(n, c, size, size)` in [0, 1), in the step's memory format."""
    return torch.rand(n, c, size, size).contiguous(memory_format=ctx.fmt)


class Step:
    """The plain step: `net.loss(*batch)` under autocast, backward, the optimizer's step, then
    `net.after_step()` where the method has one (a momentum encoder, a memory bank)."""

    def __init__(self, cfg, ctx, net, batch):
        self.net = net.to(memory_format=ctx.fmt)
        self.net.train()
        self.ctx = ctx
        self.batch = batch
        self.opt = optimizer(cfg["train"]["optimizer"], net.parameters(), ctx.fused)
        self.loss = ctx.compile(self.net.loss)

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            loss = self.loss(*self.batch)
        loss.backward()
        self.opt.step()
        after = getattr(self.net, "after_step", None)
        if after is not None:
            with torch.no_grad():
                after()
        return loss


def cut(x, ys, xs, side):
    """Square patches of `side` pixels at per-image top-left corners: `x` `(B, C, H, W)`,
    `ys` and `xs` `(B, K)` integer corners; returns `(B, K, C, side, side)` (one gather from
    the `side × side` windows of `x`)."""
    windows = x.unfold(2, side, 1).unfold(3, side, 1)  # (B, C, H-s+1, W-s+1, s, s), a view
    return windows[torch.arange(x.shape[0]).unsqueeze(1), :, ys, xs]
