//! What the convolution probes (`winograd_probe`, `conv_gemm_probe`) share: their error type
//! and their timer.
use std::time::Instant;

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
