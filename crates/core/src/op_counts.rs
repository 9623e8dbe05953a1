//! How many times libtorch runs each operator, by name, and for how long: a global callback on
//! libtorch's `RecordFunction` (the hook PyTorch's profiler reads, `csrc/op_counts.cpp`),
//! counting dispatched ATen operators (`aten::add_`, and the operators they call in turn),
//! autograd's backward functions (`ConvolutionBackward0`) and the entry points of selfsup's own
//! kernels (`selfsup::winograd_conv`, `selfsup::conv_gemm`, `selfsup::batch_norm_relu`,
//! `selfsup::relu_dropout`) on every thread, with each operator's self time: its wall time less
//! that of the operators it ran on its thread, as PyTorch's profiler's `self_cpu_time_total`.
//!
//! The trainer counts the operators of a run's steps after the first two (log lines and
//! checkpoints left out) when `SELFSUP_OP_COUNTS` names a file ([`from_env`]), and writes them
//! there at the end as `{"steps": n, "ops": {name: calls}, "self_us": {name: microseconds}}`.
//! `cargo xtask bench ops` sets it and counts PyTorch's step on the same config beside it
//! (`bench/train_step.py --op-counts`), so that every operator selfsup adds to a step (on CUDA,
//! most are a kernel launch) shows, and (`--times`) where a step's time goes on either side.
//! With `SELFSUP_OP_SHAPES` set as well ([`Key::Shapes`]; `bench ops --shapes`), each name is
//! followed by its tensor arguments' dtypes, sizes and layouts and its list arguments
//! (`aten::convolution_backward BFloat16[128, 64, 8, 8]cl ... [True, True, False]`), as
//! PyTorch's side writes them from its profiler's trace, which tells a step's layers apart.
use std::ffi::{c_char, CStr};
use std::path::PathBuf;

extern "C" {
    fn selfsup_op_counts_enable(on: i32, shapes: i32, err: *mut c_char, err_len: usize) -> i32;
    fn selfsup_op_counts_take(
        clear: i32,
        buf: *mut c_char,
        len: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> i64;
}

/// The environment variable naming the file the trainer writes its steps' counts to.
pub const ENV: &str = "SELFSUP_OP_COUNTS";

/// The environment variable that keys the trainer's counts by shapes ([`Key::Shapes`]) when set
/// and not empty.
pub const SHAPES_ENV: &str = "SELFSUP_OP_SHAPES";

/// The file `SELFSUP_OP_COUNTS` names, if set and not empty.
pub fn from_env() -> Option<PathBuf> {
    std::env::var_os(ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// How operators are told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// By name (`aten::convolution_backward`).
    Name,
    /// By name, then each tensor argument as `dtype[sizes]layout` (`BFloat16[128, 64, 8, 8]cl`:
    /// `cl` channels-last, `s` neither that nor contiguous, nothing when contiguous; `None` for
    /// an absent one) and each list argument (`[1, 1]`, `[True, False]`), space-separated; other
    /// scalars left out. Asks libtorch for every operator's inputs: slower.
    Shapes,
}

impl Key {
    /// [`Key::Shapes`] where `SELFSUP_OP_SHAPES` is set and not empty, else [`Key::Name`].
    pub fn from_env() -> Key {
        match std::env::var_os(SHAPES_ENV) {
            Some(v) if !v.is_empty() => Key::Shapes,
            _ => Key::Name,
        }
    }
}

fn message(err: &[u8]) -> String {
    CStr::from_bytes_until_nul(err).map_or_else(
        |_| "libtorch's RecordFunction failed".to_string(),
        |m| m.to_string_lossy().into_owned(),
    )
}

/// Counts the operators run from now on by name, on every thread (`true`), or stops counting
/// (`false`); the counts so far are kept.
pub fn enable(on: bool) -> Result<(), String> {
    enable_keyed(on, Key::Name)
}

/// [`enable`], with operators told apart by `key` (a later call may count by the other key: the
/// counts so far are kept beside the new ones).
pub fn enable_keyed(on: bool, key: Key) -> Result<(), String> {
    let mut err = [0u8; 1024];
    let shapes = i32::from(key == Key::Shapes);
    // SAFETY: the buffer outlives the call and its length is passed with it.
    let rc = unsafe {
        selfsup_op_counts_enable(i32::from(on), shapes, err.as_mut_ptr().cast(), err.len())
    };
    if rc < 0 {
        return Err(message(&err));
    }
    Ok(())
}

/// One operator's calls and their self time ([`take`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OpCount {
    /// libtorch's name of the operator (`aten::add_`, `ConvolutionBackward0`).
    pub name: String,
    /// The calls counted.
    pub calls: u64,
    /// The calls' wall time on their threads less that of the operators they ran there.
    pub self_ns: u64,
}

/// Each operator's calls and self time so far, sorted by name; the counts start again from
/// zero.
pub fn take() -> Result<Vec<OpCount>, String> {
    let mut err = [0u8; 1024];
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: both buffers outlive the call and their lengths are passed with them.
        let need = unsafe {
            selfsup_op_counts_take(
                1,
                buf.as_mut_ptr().cast(),
                buf.len(),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        let Ok(need) = usize::try_from(need) else {
            return Err(message(&err));
        };
        if need < buf.len() {
            buf.truncate(need);
            break;
        }
        buf = vec![0u8; need + 1];
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .filter_map(|l| {
            let (rest, self_ns) = l.rsplit_once('\t')?;
            let (name, calls) = rest.rsplit_once('\t')?;
            Some(OpCount {
                name: name.to_string(),
                calls: calls.parse().ok()?,
                self_ns: self_ns.parse().ok()?,
            })
        })
        .collect())
}

/// Held by each test that counts: counting is global, and one test's `enable(false)` or `take`
/// would stop or clear another's counts.
#[cfg(test)]
pub(crate) static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    fn find<'a>(counts: &'a [OpCount], name: &str) -> Option<&'a OpCount> {
        counts.iter().find(|c| c.name == name)
    }

    fn count(counts: &[OpCount], name: &str) -> u64 {
        find(counts, name).map_or(0, |c| c.calls)
    }

    // The counts are global and the test harness runs other tests beside this one, so it
    // counts operators no other test of the crate runs (`hypot`, `copysign`, `cdist`).
    #[test]
    fn the_operators_run_while_counting_are_counted() {
        let _serial = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        let x = Tensor::ones([4, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let y = Tensor::ones([4, 3], (Kind::Float, tch::Device::Cpu));
        enable(true).unwrap();
        let h = x.hypot(&y).sum(Kind::Float);
        let _ = x.copysign(&y);
        let _ = x.copysign(&y);
        h.backward();
        enable(false).unwrap();
        let _ = x.copysign(&y);
        let counts = take().unwrap();
        assert_eq!(count(&counts, "aten::copysign"), 2, "{counts:?}");
        assert_eq!(count(&counts, "aten::hypot"), 1, "{counts:?}");
        // The backward pass: its function, and the gradient accumulated into `x`.
        assert_eq!(count(&counts, "HypotBackward0"), 1, "{counts:?}");
        assert!(count(&counts, "torch::autograd::AccumulateGrad") >= 1, "{counts:?}");
        // Taken: the counts start from zero; other threads' operators count too.
        enable(true).unwrap();
        std::thread::spawn(move || {
            let _ = x.copysign(&y);
        })
        .join()
        .unwrap();
        enable(false).unwrap();
        let counts = take().unwrap();
        assert_eq!(count(&counts, "aten::copysign"), 1, "{counts:?}");
        assert_eq!(count(&counts, "aten::hypot"), 0, "{counts:?}");
    }

    // Keyed by shapes, the same operator on other shapes, dtypes or layouts counts apart, its
    // list arguments written as PyTorch's trace writes them; then by name again.
    #[test]
    fn keyed_by_shapes_each_layout_counts_apart() {
        let _serial = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        let x = Tensor::ones([2, 3, 4, 5], (Kind::Float, tch::Device::Cpu));
        let cl = crate::precision::to_channels_last(&x).unwrap();
        enable_keyed(true, Key::Shapes).unwrap();
        let _ = x.hypot(&x);
        let _ = cl.hypot(&cl);
        let _ = cl.hypot(&cl);
        let _ = x.transpose(0, 1).hypot(&x.transpose(0, 1));
        let _ = x.to_kind(Kind::BFloat16).hypot(&x.to_kind(Kind::BFloat16));
        let _ = x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false);
        enable_keyed(false, Key::Shapes).unwrap();
        enable(true).unwrap();
        let _ = x.hypot(&x);
        enable(false).unwrap();
        let counts = take().unwrap();
        let c = |name: &str| count(&counts, name);
        assert_eq!(c("aten::hypot Float[2, 3, 4, 5] Float[2, 3, 4, 5]"), 1, "{counts:?}");
        assert_eq!(c("aten::hypot Float[2, 3, 4, 5]cl Float[2, 3, 4, 5]cl"), 2, "{counts:?}");
        assert_eq!(c("aten::hypot Float[3, 2, 4, 5]s Float[3, 2, 4, 5]s"), 1, "{counts:?}");
        let bf16 = "aten::hypot BFloat16[2, 3, 4, 5] BFloat16[2, 3, 4, 5]";
        assert_eq!(c(bf16), 1, "{counts:?}");
        assert_eq!(c("aten::max_pool2d Float[2, 3, 4, 5] [3, 3] [1, 1] [1, 1] [1, 1]"), 1);
        assert_eq!(c("aten::hypot"), 1, "{counts:?}");
    }

    /// Profiles the test's operators in PyTorch and writes the keys `bench/train_step.py
    /// --op-shapes` gives them, one a line, to `keys.txt` in the folder named by `argv[1]`.
    const SHAPES_PY: &str = r#"
import os, sys
import torch
import torch.nn.functional as F
root = os.environ["CARGO_MANIFEST_DIR"]
sys.path.insert(0, os.path.join(root, "..", "..", "bench"))
import train_step
torch.manual_seed(0)
x = torch.randn(4, 8, 6, 6).to(memory_format=torch.channels_last)
w = torch.randn(16, 8, 3, 3).to(memory_format=torch.channels_last).requires_grad_()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                            record_shapes=True) as prof:
    with torch.autocast("cpu", torch.bfloat16):
        y = F.conv2d(x, w, None, 1, 1)
    y.float().sum().backward()
    F.max_pool2d(x.contiguous(), 3, 2, 1)
    x.transpose(0, 1) * x.transpose(0, 1)
ops, _ = train_step.shape_counts(prof)
with open(os.path.join(sys.argv[1], "keys.txt"), "w") as f:
    f.write("\n".join(sorted(ops)))
"#;

    /// The operators the test compares: their keys on selfsup's side and PyTorch's.
    const COMPARED: [&str; 5] = [
        "aten::convolution ",
        "aten::convolution_backward ",
        "aten::max_pool2d ",
        "aten::mul ",
        "aten::copy_ ",
    ];

    // The same operators keyed by shapes here and by `bench/train_step.py --op-shapes` from
    // PyTorch's profiler (with `SELFSUP_PYTHON` set): the keys of a bf16 channels-last
    // convolution's forward and backward (the weight's gradient alone), a pooling with list
    // arguments, a product of transposed views, and autocast's copies, are the same strings
    // (PyTorch's all among ours; run alone, the two sets were equal).
    #[test]
    fn keyed_by_shapes_as_pytorch_s_profiler_keys_them() {
        let _serial = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let dev = tch::Device::Cpu;
        let x =
            crate::precision::to_channels_last(&Tensor::randn([4, 8, 6, 6], (Kind::Float, dev)))
                .unwrap();
        let w =
            crate::precision::to_channels_last(&Tensor::randn([16, 8, 3, 3], (Kind::Float, dev)))
                .unwrap()
                .set_requires_grad(true);
        enable_keyed(true, Key::Shapes).unwrap();
        let y = crate::precision::autocast(dev, crate::precision::Precision::Bf16, || {
            x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
        });
        y.to_kind(Kind::Float).sum(Kind::Float).backward();
        let _ = x.contiguous().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let _ = x.transpose(0, 1) * x.transpose(0, 1);
        enable_keyed(false, Key::Shapes).unwrap();
        let keys = |all: Vec<String>| -> Vec<String> {
            let mut k: Vec<String> =
                all.into_iter().filter(|k| COMPARED.iter().any(|c| k.starts_with(c))).collect();
            k.sort();
            k
        };
        let ours = keys(take().unwrap().into_iter().map(|c| c.name).collect());
        assert!(
            ours.iter().any(|k| k.starts_with("aten::convolution_backward BFloat16[4, 16, 6, 6]")
                && k.ends_with("[False, True, False]")),
            "{ours:#?}"
        );
        let Some(python) = std::env::var_os("SELFSUP_PYTHON") else {
            eprintln!("skipping the comparison with PyTorch's keys: SELFSUP_PYTHON is not set");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let (ok, text) = crate::test_python::run_script(&python, SHAPES_PY, dir.path());
        assert!(ok, "PyTorch's side failed:\n{text}");
        let theirs = std::fs::read_to_string(dir.path().join("keys.txt")).unwrap();
        let theirs = keys(theirs.lines().map(str::to_string).collect());
        // The counts are the process's: other tests' threads may run these operators while this
        // one counts, adding keys of their own to ours. Every key PyTorch gives must be ours too.
        let missing: Vec<&String> = theirs.iter().filter(|k| !ours.contains(k)).collect();
        assert!(missing.is_empty() && !theirs.is_empty(), "{missing:#?} not among {ours:#?}");
    }

    // `cdist` with p = 1 is an operator that calls another, `_cdist_forward`, which does the
    // work: the inner operator's time is its own, not the outer one's too.
    #[test]
    fn an_operator_s_self_time_leaves_out_the_operators_it_runs() {
        let _serial = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        let x = Tensor::rand([400, 64], (Kind::Float, tch::Device::Cpu));
        enable(true).unwrap();
        let start = std::time::Instant::now();
        let d = Tensor::cdist(&x, &x, 1.0, None::<i64>);
        let wall = start.elapsed().as_nanos() as u64;
        enable(false).unwrap();
        assert_eq!(d.size(), [400, 400]);
        let counts = take().unwrap();
        let (outer, inner) = (find(&counts, "aten::cdist"), find(&counts, "aten::_cdist_forward"));
        let (Some(outer), Some(inner)) = (outer, inner) else {
            panic!("cdist and _cdist_forward not both counted: {counts:?}")
        };
        assert_eq!((outer.calls, inner.calls), (1, 1), "{counts:?}");
        // 400 x 400 x 64 absolute differences: the inner operator's work, not the outer's.
        assert!(inner.self_ns > outer.self_ns, "{outer:?} {inner:?}");
        assert!(outer.self_ns + inner.self_ns <= wall, "{outer:?} {inner:?}, wall {wall} ns");
        assert!(inner.self_ns > 0);
    }
}
