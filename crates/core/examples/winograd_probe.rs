//! Times each pass of a 3×3 stride-1 convolution (fp32, channels-last, batch 128) by libtorch
//! (oneDNN) and by selfsup's Winograd F(2×2, 3×3) (`selfsup_core::encoders::conv`), at the
//! layer shapes of ResNet-18 (CIFAR stem) and the NIN-192: the measurements behind
//! [`selfsup_core::encoders::conv::plan`]. Milliseconds, medians of 7 calls after 2; the
//! backward passes timed alone on a kept graph.
//!
//! Run: `cargo run --release -p selfsup-core --example winograd_probe [-- THREADS]` (default 2).
use selfsup_core::encoders::conv::{conv3x3_winograd, Plan};
use selfsup_core::precision::to_channels_last;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

// The C allocator the `selfsup` binary runs on (jemalloc, freed pages kept): crates/alloc.
selfsup_alloc::install!();

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn median_ms(mut f: impl FnMut()) -> f64 {
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

fn main() -> Result<()> {
    let threads = std::env::args().nth(1).map(|t| t.parse()).transpose()?.unwrap_or(2);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    println!("{threads} threads, fp32 channels-last, batch 128; ms per call, oneDNN / Winograd\n");
    println!("| channels, side | forward | backward to input | backward to weights |");
    println!("|---|---:|---:|---:|");
    for (c, side) in [(64, 32), (128, 16), (256, 8), (512, 4), (192, 8)] {
        let opts = (Kind::Float, Device::Cpu);
        let x =
            to_channels_last(&Tensor::randn([128, c, side, side], opts))?.set_requires_grad(true);
        let w = to_channels_last(&Tensor::randn([c, c, 3, 3], opts))?.set_requires_grad(true);
        let mut cells = [String::new(), String::new(), String::new()];
        for winograd in [false, true] {
            let conv = || -> Result<Tensor> {
                Ok(if winograd {
                    conv3x3_winograd(&x, &w, Plan::ALL)?
                        .ok_or("Winograd did not take the convolution")?
                } else {
                    x.conv2d(&w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1)
                })
            };
            let y = conv()?;
            let forward = median_ms(|| drop(tch::no_grad(conv)));
            let input = median_ms(|| drop(Tensor::run_backward(&[&y], &[&x], true, false)));
            let weight = median_ms(|| drop(Tensor::run_backward(&[&y], &[&w], true, false)));
            for (cell, ms) in cells.iter_mut().zip([forward, input, weight]) {
                let sep = if winograd { " / " } else { "" };
                cell.push_str(&format!("{sep}{ms:.1}"));
            }
        }
        println!("| {c}, {side}×{side} | {} | {} | {} |", cells[0], cells[1], cells[2]);
    }
    Ok(())
}
