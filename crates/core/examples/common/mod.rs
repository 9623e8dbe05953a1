//! What the convolution probes (`winograd_probe`, `conv_gemm_probe`) share: their error type,
//! their first two arguments and their timer.
use std::time::Instant;

use tch::Kind;

/// A probe's result.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Milliseconds of one call of `f`: the median of 7 calls after 2 untimed ones.
pub fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut runs: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[3]
}

/// The probe's arguments `[THREADS [KIND]]` (2 threads unless given; KIND `fp32` or `bf16`,
/// `default` unless given), and the arguments after them.
pub fn threads_and_kind(default: Kind) -> Result<(i32, Kind, impl Iterator<Item = String>)> {
    let mut args = std::env::args().skip(1);
    let threads = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    let kind = match args.next().as_deref() {
        None => default,
        Some("fp32") => Kind::Float,
        Some("bf16") => Kind::BFloat16,
        Some(other) => return Err(format!("kind {other:?}: expected fp32 or bf16").into()),
    };
    Ok((threads, kind, args))
}
