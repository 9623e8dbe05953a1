"""Reference for `cargo xtask bench train`: the PyTorch training step of a selfsup method on CPU
(or, with `--device cuda`, on a GPU: the steps of `cargo xtask gpu-check`'s comparison).

Runs the step described by a selfsup config file (the file `selfsup train --config` runs in the
same benchmark): its `method`, `encoder`, `train.batch_size`, `train.optimizer`,
`method_config`, `train.threads`, `train.channels_last` (network and batch in channels-last) and
`train.precision` (`bf16`: the forward pass under `torch.autocast(device, torch.bfloat16)`).
On CUDA `train.deterministic` is applied as selfsup applies it: true makes cuDNN deterministic
with its autotuner off and TF32 off in cuDNN and cuBLAS; false turns the autotuner on and keeps
PyTorch's defaults (TF32 in cuDNN convolutions, not in matmuls).
Each method's step is `reference/<method>.py`, written as a PyTorch user would write it with the
same networks and losses; `--fused` gives its optimizers `fused=True`; `--compile` compiles the
step's loss with `torch.compile` (inductor; the compilation falls in the untimed warm-up steps).

The batch is drawn once (no data loading is timed); the first `--warmup` steps are not timed.
`--op-counts FILE` counts the operators of the timed steps by name with PyTorch's profiler (the
same `RecordFunction` events `SELFSUP_OP_COUNTS` counts in selfsup's trainer), with each name's
self time (the profiler's `self_cpu_time_total`, microseconds); the step's times are then the
profiler's, not the bench's.
Prints one JSON line: source images per second and seconds per step.
Usage: python bench/train_step.py --config run.json [--steps 5] [--warmup 2] [--fused] [--compile]
       [--device cpu|cuda] [--op-counts FILE]
"""
import argparse
import importlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a selfsup config (JSON)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--fused", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--op-counts", metavar="FILE",
                    help="write the operators of the timed steps, counted by name, and their self "
                         "times to FILE")
    a = ap.parse_args()
    with open(a.config) as f:
        cfg = json.load(f)
    train = cfg["train"]
    cuda = a.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("train_step.py: --device cuda, but torch sees no CUDA device")
        torch.set_default_device("cuda")
        common.DEVICE_TYPE = "cuda"
        det = train.get("deterministic", True)
        torch.backends.cudnn.deterministic = det
        torch.backends.cudnn.benchmark = not det
        if det:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
    else:
        torch.set_num_threads(train.get("threads") or os.cpu_count())
    torch.manual_seed(cfg.get("seed", 0))
    method = cfg["method"]
    try:
        module = importlib.import_module("reference." + method.replace("-", "_"))
    except ModuleNotFoundError:
        raise SystemExit(f"train_step.py: method `{method}` has no reference step in bench/reference")
    ctx = common.Ctx(train.get("channels_last", False), train.get("precision") == "bf16", a.fused,
                     a.compile)
    step = module.build(cfg, ctx)
    prof = None
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            if cuda:
                torch.cuda.synchronize()
            if a.op_counts:
                prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                prof.__enter__()
            start = time.perf_counter()
        loss = step()
    if prof is not None:
        prof.__exit__(None, None, None)
        events = prof.key_averages()
        ops = {e.key: e.count for e in events}
        self_us = {e.key: e.self_cpu_time_total for e in events}
        with open(a.op_counts, "w") as f:
            json.dump({"steps": a.steps, "ops": ops, "self_us": self_us}, f)
    loss.item()
    secs = (time.perf_counter() - start) / a.steps
    print(json.dumps({"images_per_s": train["batch_size"] / secs, "seconds_per_step": secs}))


if __name__ == "__main__":
    main()
