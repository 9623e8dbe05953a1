//! Times the encoders' 3×3 stride-2 pools (padding 1) at the NINs' and the cpu profiles'
//! AlexNet-24's shapes: libtorch's `max_pool2d` and `avg_pool2d` against
//! [`selfsup_core::ops::max_pool2d`] (`csrc/max_pool.cpp`) and
//! [`selfsup_core::ops::avg_pool2d`] (`csrc/avg_pool.cpp`, the NIN's second pool, at its
//! shapes), in float NCHW, float channels-last and bfloat16 channels-last, the
//! forward pass alone (no gradient) and forward with backward (the input requiring grad; the
//! gradient of `Σ g ⊙ y` for a fixed `g`, so both columns also count that product and sum).
//! Milliseconds a call, means of 50 after 5, on 2 threads.
//!
//! `cargo run --release -p selfsup-core --example pool_probe`
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn millis(f: &dyn Fn()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let start = Instant::now();
    for _ in 0..50 {
        f();
    }
    start.elapsed().as_secs_f64() / 50.0 * 1000.0
}

fn main() {
    tch::set_num_threads(2);
    println!(
        "{:<4} {:<20} {:<16} {:>9} {:>9} {:>11} {:>11}",
        "pool", "shape", "layout", "forward", "", "+ backward", ""
    );
    println!(
        "{:<4} {:<20} {:<16} {:>9} {:>9} {:>11} {:>11}",
        "", "", "", "libtorch", "selfsup", "libtorch", "selfsup"
    );
    let max = [[256i64, 8, 32, 32], [256, 16, 16, 16], [128, 24, 32, 32], [128, 64, 16, 16]];
    let avg = [[256i64, 16, 16, 16], [512, 32, 16, 16]];
    let shapes = max.iter().map(|s| (false, s)).chain(avg.iter().map(|s| (true, s)));
    for (mean, &size) in shapes {
        for (kind, cl) in [(Kind::Float, false), (Kind::Float, true), (Kind::BFloat16, true)] {
            let x = Tensor::randn(size, (Kind::Float, Device::Cpu)).to_kind(kind);
            let x = if cl { selfsup_core::precision::to_channels_last(&x).unwrap() } else { x };
            let xg = x.copy().set_requires_grad(true);
            let theirs = |x: &Tensor| {
                if mean {
                    x.avg_pool2d([3, 3], [2, 2], [1, 1], false, true, None::<i64>)
                } else {
                    x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
                }
            };
            let ours = |x: &Tensor| {
                if mean {
                    selfsup_core::ops::avg_pool2d(x, 3, 2, 1, true)
                } else {
                    selfsup_core::ops::max_pool2d(x, 3, 2, 1)
                }
            };
            let g = theirs(&x).rand_like();
            let both = |f: &dyn Fn(&Tensor) -> Tensor| {
                (f(&xg) * &g).sum(Kind::Float).backward();
                let _ = xg.grad().zero_();
            };
            println!(
                "{:<4} {:<20} {:<16} {:9.2} {:9.2} {:11.2} {:11.2}",
                if mean { "avg" } else { "max" },
                format!("{size:?}"),
                format!("{kind:?}{}", if cl { " NHWC" } else { " NCHW" }),
                millis(&|| drop(theirs(&x))),
                millis(&|| drop(ours(&x))),
                millis(&|| both(&theirs)),
                millis(&|| both(&ours)),
            );
        }
    }
}
