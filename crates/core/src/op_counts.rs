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
use std::ffi::{c_char, CStr};
use std::path::PathBuf;

extern "C" {
    fn selfsup_op_counts_enable(on: i32, err: *mut c_char, err_len: usize) -> i32;
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

/// The file `SELFSUP_OP_COUNTS` names, if set and not empty.
pub fn from_env() -> Option<PathBuf> {
    std::env::var_os(ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn message(err: &[u8]) -> String {
    CStr::from_bytes_until_nul(err).map_or_else(
        |_| "libtorch's RecordFunction failed".to_string(),
        |m| m.to_string_lossy().into_owned(),
    )
}

/// Counts the operators run from now on, on every thread (`true`), or stops counting (`false`);
/// the counts so far are kept.
pub fn enable(on: bool) -> Result<(), String> {
    let mut err = [0u8; 1024];
    // SAFETY: the buffer outlives the call and its length is passed with it.
    let rc = unsafe { selfsup_op_counts_enable(i32::from(on), err.as_mut_ptr().cast(), err.len()) };
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

    /// Held by each test here: counting is global, and one test's `enable(false)` or `take`
    /// would stop or clear another's counts.
    static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
