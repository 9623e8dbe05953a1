//! Times the encoders' 3×3 stride-2 max pool (padding 1) on contiguous (NCHW) float maps, at
//! the NINs' and the cpu profiles' AlexNet-24's shapes: libtorch's `max_pool2d` against
//! [`selfsup_core::ops::max_pool2d`] (`csrc/max_pool.cpp`), the forward pass alone and with
//! the indices a backward pass needs (input requiring grad), and libtorch's on channels-last
//! maps for reference. Milliseconds a call, means of 50 after 5, on 2 threads.
//!
//! `cargo run --release -p selfsup-core --example pool_probe`
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn millis(f: &dyn Fn() -> Tensor) -> f64 {
    for _ in 0..5 {
        let _ = f();
    }
    let start = Instant::now();
    for _ in 0..50 {
        let _ = f();
    }
    start.elapsed().as_secs_f64() / 50.0 * 1000.0
}

fn main() {
    tch::set_num_threads(2);
    println!("shape                  libtorch  selfsup  (with indices)  libtorch  selfsup  channels-last libtorch");
    for size in [[256i64, 8, 32, 32], [256, 16, 16, 16], [128, 24, 32, 32], [128, 64, 16, 16]] {
        let x = Tensor::randn(size, (Kind::Float, Device::Cpu));
        let xg = x.copy().set_requires_grad(true);
        let cl = selfsup_core::precision::to_channels_last(&xg).unwrap();
        let theirs = |x: &Tensor| x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        println!(
            "{:<22} {:8.2} {:8.2}  {:14} {:8.2} {:8.2}  {:8.2}",
            format!("{size:?}"),
            millis(&|| theirs(&x)),
            millis(&|| selfsup_core::ops::max_pool2d(&x, 3, 2, 1)),
            "",
            millis(&|| theirs(&xg)),
            millis(&|| selfsup_core::ops::max_pool2d(&xg, 3, 2, 1)),
            millis(&|| theirs(&cl)),
        );
    }
}
