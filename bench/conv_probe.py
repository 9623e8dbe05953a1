"""Probe: how close libtorch's CPU convolutions run to the machine, and whether another
formulation of the same convolution would be faster here.

The large networks of the performance issue (RotNet's NIN-192, SimCLR's ResNet-18 with the
CIFAR stem) spend most of a training step in oneDNN's convolutions, the same calls in selfsup
and in PyTorch, so going past PyTorch there needs faster convolutions than libtorch's. For each
3x3 and 5x5 stride-1 layer shape of the two networks this times, in channels-last fp32
(PyTorch's fastest fp32 layout on the CPU):

- the three passes libtorch runs in a training step: forward, backward to the input, backward
  to the weights (`aten::convolution_backward` with one output each), and their GFLOP/s
  (`2 N H W C K k^2` floating point operations each);
- two other formulations, timed for their matrix products alone (a lower bound on their time:
  the transforms and copies around them are not counted):
  - Winograd F(2x2, 3x3) (Lavin & Gray, CVPR 2016): 16 products of `(tiles, C) x (C, K)`, one
    `mm` each as selfsup's `csrc/winograd.cpp` runs them (one `bmm` was slower), against the
    forward pass;
  - the weight gradient as one product `(K, N H W) x (N H W, k^2 C)` over the image columns
    (im2col), against oneDNN's backward to the weights; with `--with-copies` also the copy that
    builds the columns.

Prints a Markdown table: milliseconds per call (median of `--repeats` after 2 untimed calls).
What it found led to selfsup's Winograd path (`crates/core/src/encoders/conv.rs`), whose passes
with their transforms the `winograd_probe` example of `selfsup-core` times against oneDNN's.
Usage: python bench/conv_probe.py [--threads 2] [--repeats 5] [--with-copies]
"""
import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

# (network, batch, C in, K out, side, kernel): stride-1 layers of the two large networks, at
# batch 128 (NIN-192 trains on 512 rotated images a step; the rate per image is what counts).
SHAPES = [
    ("resnet18 layer1", 128, 64, 64, 32, 3),
    ("resnet18 layer2", 128, 128, 128, 16, 3),
    ("resnet18 layer3", 128, 256, 256, 8, 3),
    ("resnet18 layer4", 128, 512, 512, 4, 3),
    ("nin-192 block2 5x5", 128, 96, 192, 16, 5),
    ("nin-192 block3 3x3", 128, 192, 192, 8, 3),
]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(f, repeats):
    """Median milliseconds of `repeats` calls of `f` after 2 untimed ones."""
    f()
    f()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        runs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(runs)


def probe(n, c, k_out, side, k, repeats, with_copies):
    cl = torch.channels_last
    x = torch.randn(n, c, side, side).contiguous(memory_format=cl)
    w = torch.randn(k_out, c, k, k).contiguous(memory_format=cl)
    dy = torch.randn(n, k_out, side, side).contiguous(memory_format=cl)
    pad = k // 2

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask)

    row = {
        "forward": timed(lambda: F.conv2d(x, w, padding=pad), repeats),
        "backward to input": timed(backward([True, False, False]), repeats),
        "backward to weights": timed(backward([False, True, False]), repeats),
    }
    if k == 3:
        tiles = n * ((side + 1) // 2) ** 2
        u, v = torch.randn(16, tiles, c), torch.randn(16, c, k_out)
        m = torch.empty(16, tiles, k_out)

        def products():
            for i in range(16):
                torch.mm(u[i], v[i], out=m[i])

        row["winograd products"] = timed(products, repeats)
    rows = n * side * side
    grad = torch.randn(rows, k_out)
    columns = torch.randn(rows, k * k * c)
    row["im2col weight product"] = timed(lambda: grad.t().mm(columns), repeats)
    if with_copies:
        padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1).contiguous()
        s = padded.stride()
        view = padded.as_strided((n, side, side, k, k, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
        row["im2col copy"] = timed(lambda: view.contiguous(), repeats)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--with-copies", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"{cpu_name()}, {a.threads} threads, torch {torch.__version__}, channels-last fp32; "
          f"ms per call (GFLOP/s)\n")
    cols = ["forward", "backward to input", "backward to weights", "winograd products",
            "im2col weight product"] + (["im2col copy"] if a.with_copies else [])
    print("| layer | N, C→K, side, k | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    for name, n, c, k_out, side, k in SHAPES:
        flops = 2 * n * side * side * c * k_out * k * k
        row = probe(n, c, k_out, side, k, a.repeats, a.with_copies)
        cells = []
        for col in cols:
            ms = row.get(col)
            if ms is None:
                cells.append("-")
            elif col in ("forward", "backward to input", "backward to weights"):
                cells.append(f"{ms:.1f} ({flops / ms / 1e6:.0f})")
            else:
                cells.append(f"{ms:.1f}")
        print(f"| {name} | {n}, {c}→{k_out}, {side}, {k} | " + " | ".join(cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
