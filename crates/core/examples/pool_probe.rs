//! Times the encoders' 3×3 stride-2 max pool (padding 1) at the NINs' and the cpu profiles'
//! AlexNet-24's shapes: libtorch's `max_pool2d` against [`selfsup_core::ops::max_pool2d`]
//! (`csrc/max_pool.cpp`), in float NCHW, float channels-last and bfloat16 channels-last, the
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
        "{:<20} {:<16} {:>9} {:>9} {:>11} {:>11}",
        "shape", "layout", "forward", "", "+ backward", ""
    );
    println!(
        "{:<20} {:<16} {:>9} {:>9} {:>11} {:>11}",
        "", "", "libtorch", "selfsup", "libtorch", "selfsup"
    );
    for size in [[256i64, 8, 32, 32], [256, 16, 16, 16], [128, 24, 32, 32], [128, 64, 16, 16]] {
        for (kind, cl) in [(Kind::Float, false), (Kind::Float, true), (Kind::BFloat16, true)] {
            let x = Tensor::randn(size, (Kind::Float, Device::Cpu)).to_kind(kind);
            let x = if cl { selfsup_core::precision::to_channels_last(&x).unwrap() } else { x };
            let xg = x.copy().set_requires_grad(true);
            let theirs = |x: &Tensor| x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
            let ours = |x: &Tensor| selfsup_core::ops::max_pool2d(x, 3, 2, 1);
            let g = theirs(&x).rand_like();
            let both = |f: &dyn Fn(&Tensor) -> Tensor| {
                (f(&xg) * &g).sum(Kind::Float).backward();
                let _ = xg.grad().zero_();
            };
            println!(
                "{:<20} {:<16} {:9.2} {:9.2} {:11.2} {:11.2}",
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
