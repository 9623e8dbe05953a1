"""Probe: the convolutions at the smallest maps as one dense matrix product, against
libtorch's (oneDNN's) convolution, in PyTorch's ops.

A stride-1 `r x r` convolution with padding `(r - 1) / 2` at an `H x W` map is a linear map
from the map's `H W C` inputs to its `H W K` outputs. Where the filter reaches across the whole
map (3x3 at 2x2 and smaller) every output depends on every input, and the whole pass is one
product of the channels-last activations `(N, H W C)` with a `(H W C, H W K)` matrix gathered
from the filters (`W~[(q, c), (p, k)] = w[k, c, tap(q, p)]`), no product by a padding zero; at
5x5 on 4x4 an output sees 12.25 of the 16 inputs on average. selfsup's `conv_dense`
(`crates/core/src/encoders/conv.rs`) is this function, written with the same libtorch ops
(`index_select` to gather, `mm`), so its backward passes are the same products.

For each shape: the largest relative difference from libtorch's convolution (output; input
and weight gradients), and milliseconds per call (median of `--repeats`, after 3 untimed
calls) of the forward pass alone and of forward + both backward passes, channels-last fp32,
oneDNN / the product. Held to AVX2 (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2`, or `cargo xtask avx2 --no-build -- sh -c '$SELFSUP_PYTHON
bench/dense_probe.py'`) it measures what an AVX2 CPU runs.
Usage: python bench/dense_probe.py [--threads 2] [--repeats 30]
"""
import argparse
import platform
import statistics
import time

import torch

# (batch, C, K, side, r): relative patch's AlexNet-24 on 8-px patches (256 patches a step:
# conv3-conv5 at 2x2, conv2 at 4x4), other widths, and two left out (3x3 at 4x4, 5x5 at 8x8).
SHAPES = [
    (256, 96, 96, 2, 3), (256, 64, 96, 2, 3), (256, 96, 64, 2, 3), (256, 24, 64, 4, 5),
    (256, 12, 32, 2, 3), (256, 32, 32, 2, 3), (64, 96, 96, 2, 3), (256, 256, 256, 2, 3),
    (256, 384, 384, 2, 3), (256, 96, 96, 1, 3), (256, 48, 48, 4, 5), (256, 12, 24, 4, 5),
    (128, 64, 64, 4, 3), (256, 3, 24, 8, 5),
]


def taps(h, w, r):
    """Tap index `ty * r + tx` linking input q to output p (q-major), `r * r` where none does."""
    pad, out = (r - 1) // 2, []
    for qy in range(h):
        for qx in range(w):
            for py in range(h):
                for px in range(w):
                    ty, tx = qy - py + pad, qx - px + pad
                    out.append(ty * r + tx if 0 <= ty < r and 0 <= tx < r else r * r)
    return torch.tensor(out)


def dense_conv(x, w, tp):
    n, c, h, wd = x.shape
    k, r, s = w.shape[0], w.shape[2], h * wd
    filters = w.permute(2, 3, 1, 0).reshape(r * r, c, k)
    if bool((tp == r * r).any()):
        filters = torch.cat([filters, filters.new_zeros(1, c, k)])
    dense = filters.index_select(0, tp).view(s, s, c, k).permute(0, 2, 1, 3).reshape(s * c, s * k)
    return (x.permute(0, 2, 3, 1).reshape(n, s * c) @ dense).view(n, h, wd, k).permute(0, 3, 1, 2)


def timed(f, repeats):
    for _ in range(3):
        f()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        runs.append(time.perf_counter() - t)
    return 1e3 * statistics.median(runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{a.threads} threads, ATen {torch.backends.cpu.get_cpu_capability()}")
    print("| batch, C→K, map, filter | rel. diff (out / grads) | forward ms | fwd + bwd ms |")
    print("|---|---|---:|---:|")
    for n, c, k, side, r in SHAPES:
        cl = torch.channels_last
        x = torch.randn(n, c, side, side).contiguous(memory_format=cl).requires_grad_()
        conv = torch.nn.Conv2d(c, k, r, padding=r // 2, bias=False).to(memory_format=cl)
        tp = taps(side, side, r)
        y1, y2 = conv(x), dense_conv(x, conv.weight, tp)
        g = torch.randn_like(y1)
        rel = lambda p, q: ((p - q).abs().max() / p.abs().max()).item()
        g1 = torch.autograd.grad(y1, [x, conv.weight], g)
        g2 = torch.autograd.grad(y2, [x, conv.weight], g)
        diff = max(rel(p, q) for p, q in zip(g1, g2))

        def fwd(f):
            def run():
                with torch.no_grad():
                    f()
            return run

        def both(f):
            return lambda: f().backward(g)

        ours = lambda: dense_conv(x, conv.weight, tp)
        theirs = lambda: conv(x)
        print(f"| {n}, {c}→{k}, {side}×{side}, {r}×{r} | {rel(y1, y2):.1e} / {diff:.1e} | "
              f"{timed(fwd(theirs), a.repeats):.2f} / {timed(fwd(ours), a.repeats):.2f} | "
              f"{timed(both(theirs), a.repeats):.2f} / {timed(both(ours), a.repeats):.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
