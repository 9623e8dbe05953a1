"""Reference for `cargo xtask bench train`: the PyTorch training step of a selfsup method on CPU
(or, with `--device cuda`, on a GPU: the steps of `cargo xtask gpu-check`'s comparison).

Runs the step described by a selfsup config file (the file `selfsup train --config` runs in the
same benchmark): its `method`, `encoder`, `train.batch_size`, `train.optimizer`,
`method_config`, `train.threads`, `train.channels_last` (network and batch in channels-last) and
`train.precision` (`bf16`: the forward pass under `torch.autocast(device, torch.bfloat16)`).
On CUDA `train.deterministic` and `train.tf32` are applied as selfsup applies them: true makes
cuDNN deterministic with its autotuner off, false turns the autotuner on; `tf32` (default
`convolutions`, PyTorch's default) allows TF32 in cuDNN convolutions, `all` in matmuls too,
`off` in neither.
Each method's step is `reference/<method>.py`, written as a PyTorch user would write it with the
same networks and losses; `--fused` gives its optimizers `fused=True`; `--compile` compiles the
step's loss with `torch.compile` (inductor; the compilation falls in the untimed warm-up steps).

The batch is drawn once (no data loading is timed); the first `--warmup` steps are not timed.
`--op-counts FILE` counts the operators of the timed steps by name with PyTorch's profiler (the
same `RecordFunction` events `SELFSUP_OP_COUNTS` counts in selfsup's trainer), with each name's
self time (the profiler's `self_cpu_time_total`, microseconds); the step's times are then the
profiler's, not the bench's. With `--op-shapes` as well, each name is followed by its arguments
as selfsup's `SELFSUP_OP_SHAPES` writes them (`crates/core/csrc/op_counts.cpp`): tensors as
`BFloat16[128, 64, 8, 8]cl` (`cl` channels-last, `s` neither that nor contiguous, nothing when
contiguous), lists as `[1, 1]`, an absent argument as `None`, other scalars and tensor lists
left out; read from the profiler's trace (`record_shapes`), self times from its nesting.
Prints one JSON line: source images per second and seconds per step.
Usage: python bench/train_step.py --config run.json [--steps 5] [--warmup 2] [--fused] [--compile]
       [--device cpu|cuda] [--op-counts FILE [--op-shapes]]
"""
import argparse
import importlib
import json
import os
import sys
import tempfile
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
    ap.add_argument("--op-shapes", action="store_true",
                    help="with --op-counts: key the operators by name and arguments")
    a = ap.parse_args()
    if a.op_shapes and not a.op_counts:
        raise SystemExit("train_step.py: --op-shapes needs --op-counts FILE")
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
        tf32 = train.get("tf32", "convolutions")
        if tf32 not in ("off", "convolutions", "all"):
            raise SystemExit(
                f"train_step.py: {a.config}: train.tf32 = {tf32!r} is not off, convolutions or all"
            )
        torch.backends.cudnn.allow_tf32 = tf32 != "off"
        torch.backends.cuda.matmul.allow_tf32 = tf32 == "all"
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
                prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                              record_shapes=a.op_shapes)
                prof.__enter__()
            start = time.perf_counter()
        loss = step()
    if prof is not None:
        prof.__exit__(None, None, None)
        if a.op_shapes:
            ops, self_us = shape_counts(prof)
        else:
            events = prof.key_averages()
            ops = {e.key: e.count for e in events}
            self_us = {e.key: e.self_cpu_time_total for e in events}
        with open(a.op_counts, "w") as f:
            json.dump({"steps": a.steps, "ops": ops, "self_us": self_us}, f)
    loss.item()
    secs = (time.perf_counter() - start) / a.steps
    print(json.dumps({"images_per_s": train["batch_size"] / secs, "seconds_per_step": secs}))


# The trace's names of tensor dtypes, as libtorch's `c10::toString` writes them.
DTYPES = {"float": "Float", "c10::BFloat16": "BFloat16", "double": "Double", "long int": "Long",
          "int": "Int", "bool": "Bool", "c10::Half": "Half", "unsigned char": "Byte",
          "signed char": "Char", "short int": "Short"}


def dense(dims, strides, order):
    """Whether `strides` lay `dims` out densely with `order`'s dimensions innermost first (as
    libtorch's `is_contiguous`: dimensions of size 1 have any stride)."""
    expected = 1
    for d in order:
        if dims[d] != 1:
            if strides[d] != expected:
                return False
            expected *= dims[d]
    return True


def layout(dims, strides):
    """`''` contiguous, `'cl'` channels-last, `'s'` neither (as op_counts.cpp's `layout`)."""
    if len(strides) != len(dims) or dense(dims, strides, range(len(dims) - 1, -1, -1)):
        return ""
    if len(dims) == 4 and dense(dims, strides, [1, 3, 2, 0]):
        return "cl"
    return "s"


def shape_key(name, args):
    """An operator's key from its trace event's `args` (see the module's docstring)."""
    types = args.get("Input type", [])
    dims = args.get("Input Dims", [])
    strides = args.get("Input Strides", [])
    concrete = args.get("Concrete Inputs", [])
    parts = [name]
    for i, t in enumerate(types):
        if t == "":
            parts.append("None")
        elif t == "ScalarList":
            parts.append(concrete[i] if i < len(concrete) else "[]")
        elif t in ("Scalar", "TensorList", "GenericList") or t.startswith("std::"):
            continue
        else:
            d = dims[i] if i < len(dims) else []
            st = strides[i] if i < len(strides) else []
            parts.append(f"{DTYPES.get(t, t)}[{', '.join(map(str, d))}]{layout(d, st)}")
    return " ".join(parts)


def shape_counts(prof):
    """Calls and self times (microseconds) of the profiled operators keyed by `shape_key`,
    from the profiler's trace: an operator's self time is its duration less that of the
    operators nested in it on its thread."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    ops, self_us = {}, {}
    by_thread = {}
    for e in events:
        by_thread.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [event, key, children's duration]
        for e in evs + [None]:
            while stack and (e is None or e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]):
                done, key, children = stack.pop()
                ops[key] = ops.get(key, 0) + 1
                self_us[key] = self_us.get(key, 0.0) + max(done["dur"] - children, 0.0)
                if stack:
                    stack[-1][2] += done["dur"]
            if e is not None:
                stack.append([e, shape_key(e["name"], e.get("args", {})), 0.0])
    return ops, self_us


if __name__ == "__main__":
    main()
