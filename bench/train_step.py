"""Reference for `cargo xtask bench train`: PyTorch training steps of a selfsup method on CPU.

The same networks as selfsup's encoders (`{"kind": "nin", "blocks": B, "width": W}`, or
`{"kind": "resnet18", "stem": "cifar"}`) with each method's head and loss, written as a PyTorch
user would write them:
- rotnet: every image in all four rotations (`torch.rot90`), global average pool, a linear
  layer to 4 classes, cross-entropy;
- simclr: each of two views through the encoder on its own, global average pool, the
  projection head `Linear(C, C, bias=False) -> BN -> ReLU -> Linear(C, 128, bias=False) -> BN`,
  NT-Xent over the 2N embeddings at temperature T.
SGD with momentum, Nesterov (rotnet) and weight decay, `zero_grad(set_to_none=True)`.
`--channels-last` puts the network and the batch in channels-last; `--bf16` runs the forward
pass under `torch.autocast("cpu", torch.bfloat16)`; `--fused` uses `SGD(fused=True)`.

The batch is drawn once (no data loading is timed); the first `--warmup` steps are not timed.
Prints one JSON line: source images per second and seconds per step.
Usage: python train_step.py --method rotnet --encoder '{"kind":"nin","blocks":4,"width":192}'
       --batch 128 --steps 5 --threads 2 [--channels-last] [--bf16] [--fused]
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(i, o, k):
    return [nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


def nin(blocks, w):
    """selfsup's `nin` encoder: `(w, round(5w/6), round(w/2))` in block 1, rounded half up."""
    w2, w3 = (w * 5 + 3) // 6, (w + 1) // 2
    layers = conv_bn_relu(3, w, 5) + conv_bn_relu(w, w2, 1) + conv_bn_relu(w2, w3, 1)
    layers += [nn.MaxPool2d(3, 2, 1)]
    layers += conv_bn_relu(w3, w, 5) + conv_bn_relu(w, w, 1) + conv_bn_relu(w, w, 1)
    layers += [nn.AvgPool2d(3, 2, 1)]
    for _ in range(blocks - 2):
        layers += conv_bn_relu(w, w, 3) + conv_bn_relu(w, w, 1) + conv_bn_relu(w, w, 1)
    return nn.Sequential(*layers), w


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


def resnet18(stem):
    """torchvision's ResNet-18 without avgpool and fc, with the `cifar` or `imagenet` stem."""
    if stem == "cifar":
        layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    else:
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i, o in enumerate([64, 128, 256, 512]):
        s = 1 if i == 0 else 2
        layers += [Basic(c, o, s), Basic(o, o, 1)]
        c = o
    return nn.Sequential(*layers), 512


def encoder(spec):
    kind = spec["kind"]
    if kind == "nin":
        return nin(spec.get("blocks", 4), spec.get("width", 192))
    if kind == "resnet18":
        return resnet18(spec.get("stem", "imagenet"))
    raise SystemExit(f"train_step.py: encoder kind `{kind}` has no reference here (nin, resnet18)")


class RotNet(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.encoder, c = encoder(spec)
        self.fc = nn.Linear(c, 4)

    def loss(self, x, labels):
        xs = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
        h = self.encoder(xs).mean((2, 3))
        return F.cross_entropy(self.fc(h), labels)


class SimClr(nn.Module):
    def __init__(self, spec, temperature):
        super().__init__()
        self.encoder, c = encoder(spec)
        self.head = nn.Sequential(nn.Linear(c, c, bias=False), nn.BatchNorm1d(c), nn.ReLU(inplace=True),
                                  nn.Linear(c, 128, bias=False), nn.BatchNorm1d(128))
        self.t = temperature

    def embed(self, x):
        return self.head(self.encoder(x).mean((2, 3)))

    def loss(self, views, _labels):
        x1, x2 = views
        z = F.normalize(torch.cat([self.embed(x1), self.embed(x2)]).float(), dim=1)
        n = z.shape[0] // 2
        sim = z @ z.t() / self.t
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(sim, targets)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["rotnet", "simclr"], default="rotnet")
    ap.add_argument("--encoder", default='{"kind": "nin", "blocks": 4, "width": 192}')
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--nesterov", action="store_true")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--fused", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    spec = json.loads(a.encoder)
    net = RotNet(spec) if a.method == "rotnet" else SimClr(spec, a.temperature)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=a.momentum, nesterov=a.nesterov,
                          weight_decay=a.weight_decay, fused=a.fused or None)
    shape = (a.batch, 3, a.size, a.size)
    if a.method == "rotnet":
        x = torch.rand(shape).contiguous(memory_format=fmt)
        labels = torch.arange(4).repeat_interleave(a.batch)
    else:
        x = tuple(torch.rand(shape).contiguous(memory_format=fmt) for _ in range(2))
        labels = None
    net.train()
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = net.loss(x, labels)
        loss.backward()
        opt.step()
    loss.item()
    secs = (time.perf_counter() - start) / a.steps
    print(json.dumps({"images_per_s": a.batch / secs, "seconds_per_step": secs}))


if __name__ == "__main__":
    main()
