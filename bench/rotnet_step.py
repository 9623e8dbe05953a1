"""Reference for `cargo xtask bench train`: PyTorch training steps of RotNet's NIN on CPU.

The same network as selfsup's `{"kind": "nin", "blocks": 4, "width": W}` encoder plus the
RotNet head (global average pool + linear to 4 rotations), SGD with Nesterov momentum and weight
decay, every image in all four rotations. Prints one JSON line with source images per second.
Usage: python rotnet_step.py --width 192 --batch 32 --steps 5 --threads 2
"""
import argparse
import json
import time

import torch
import torch.nn as nn


def block(i, o, k):
    return [nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


def nin(w):
    c1, c2 = w * 160 // 192, w * 96 // 192
    return nn.Sequential(
        *block(3, w, 5), *block(w, c1, 1), *block(c1, c2, 1), nn.MaxPool2d(3, 2, 1),
        *block(c2, w, 5), *block(w, w, 1), *block(w, w, 1), nn.AvgPool2d(3, 2, 1),
        *block(w, w, 3), *block(w, w, 1), *block(w, w, 1),
        *block(w, w, 3), *block(w, w, 1), *block(w, w, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 4),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = nin(a.width)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.rand(a.batch, 3, 32, 32)
    labels = torch.arange(4).repeat_interleave(a.batch)
    for i in range(a.steps + 1):
        if i == 1:
            start = time.perf_counter()
        xs = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(xs), labels).backward()
        opt.step()
    secs = (time.perf_counter() - start) / a.steps
    print(json.dumps({"images_per_s": a.batch / secs, "seconds_per_step": secs}))


if __name__ == "__main__":
    main()
