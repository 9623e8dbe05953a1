//! Times each pass of a bias-free convolution (channels-last, batch 128 unless set, bf16 and
//! fp32 tensors without autocast) by libtorch (oneDNN) and as matrix products over im2col columns
//! (`selfsup_core::encoders::conv::conv_gemm`), at the layer shapes of ResNet-18 with the CIFAR
//! stem (stride 1 and 2, the 1×1 downsampling shortcuts), the NIN-192's 3×3 blocks and the cpu
//! profiles' AlexNet-24: the measurements behind [`selfsup_core::encoders::conv::plan_gemm`].
//! Milliseconds, medians of 7 calls after 2; the backward passes timed alone on a kept graph,
//! each and both (as in training; the backward pass to the input as products only at stride
//! 1: at other strides it stays libtorch's).
//!
//! Also DCGAN's 4×4 stride-2 layers (the context encoder's discriminator), its last layer over
//! the whole 4×4 map, and the AlexNet-24's conv3..5 at 4×4 maps (CPC's 16-px patches: run with
//! `PROBE_BATCH=1600`).
//!
//! Run: `cargo run --release -p selfsup-core --example conv_gemm_probe [-- THREADS [KIND]]`
//! (default 2 threads; KIND `bf16` (default) or `fp32`). `PROBE_BATCH` sets the batch (default
//! 128); `PROBE_SHAPES="r,stride,padding,c,k,side;..."` replaces the list of layers.
use selfsup_core::encoders::conv::{conv_gemm, Plan};
use selfsup_core::precision::to_channels_last;
use tch::{Device, Kind, Tensor};

// The C allocator the `selfsup` binary runs on (jemalloc, freed pages kept): crates/alloc.
selfsup_alloc::install!();

mod common;
use common::{median_ms, Result};

fn main() -> Result<()> {
    let (threads, kind, _) = common::threads_and_kind(Kind::BFloat16)?;
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let batch: i64 = match std::env::var("PROBE_BATCH") {
        Ok(b) => b.parse().map_err(|e| format!("PROBE_BATCH={b:?}: {e}"))?,
        Err(_) => 128,
    };
    // (filter side, stride, padding, channels in, out, input side): ResNet-18 (CIFAR stem):
    // layer1..4's stride-1 3x3, the first block of layer2..4 (3x3 stride 2 and the 1x1 stride-2
    // shortcut); the NIN-192's 3x3 blocks 3-4; the cpu profiles' AlexNet-24 conv3..5; the
    // NIN-192's 1x1 layers (block 1 at 32x32, 2 at 16x16, 3-4 at 8x8) and 5x5 layers (blocks 2
    // and 1); the discriminator's 4x4 stride-2 layers (cpu profile, then wider) and its last
    // layer; the AlexNet-24's conv3..5 and conv2 on CPC's 16-px patches.
    let shapes = [
        (3, 1, 1, 64, 64, 32),
        (3, 1, 1, 128, 128, 16),
        (3, 1, 1, 256, 256, 8),
        (3, 1, 1, 512, 512, 4),
        (3, 2, 1, 64, 128, 32),
        (3, 2, 1, 128, 256, 16),
        (3, 2, 1, 256, 512, 8),
        (1, 2, 0, 64, 128, 32),
        (1, 2, 0, 128, 256, 16),
        (1, 2, 0, 256, 512, 8),
        (3, 1, 1, 192, 192, 8),
        (3, 1, 1, 64, 96, 8),
        (3, 1, 1, 96, 96, 8),
        (3, 1, 1, 96, 64, 8),
        (1, 1, 0, 192, 160, 32),
        (1, 1, 0, 160, 96, 32),
        (1, 1, 0, 192, 192, 16),
        (1, 1, 0, 192, 192, 8),
        (5, 1, 2, 96, 192, 16),
        (5, 1, 2, 3, 192, 32),
        (4, 2, 1, 3, 64, 32),
        (4, 2, 1, 64, 128, 16),
        (4, 2, 1, 128, 256, 8),
        (4, 2, 1, 64, 128, 32),
        (4, 2, 1, 128, 256, 16),
        (4, 2, 1, 256, 512, 8),
        (4, 1, 0, 256, 1, 4),
        (4, 1, 0, 512, 1, 4),
        (3, 1, 1, 64, 96, 4),
        (3, 1, 1, 96, 96, 4),
        (3, 1, 1, 96, 64, 4),
        (5, 1, 2, 24, 64, 8),
    ];
    // PROBE_SHAPES="r,stride,padding,c,k,side;..." replaces the list.
    let shapes = match std::env::var("PROBE_SHAPES") {
        Ok(list) => list.split(';').map(layer).collect::<Result<Vec<_>>>()?,
        Err(_) => shapes.to_vec(),
    };
    println!(
        "{threads} threads, {kind:?} channels-last, batch {batch}; ms per call, oneDNN / GEMM\n"
    );
    println!("| filter, stride, channels, input side | forward | to input | to weights | both |");
    println!("|---|---:|---:|---:|---:|");
    for (r, stride, pad, c, k, side) in shapes {
        let opts = (kind, Device::Cpu);
        let x =
            to_channels_last(&Tensor::randn([batch, c, side, side], opts))?.set_requires_grad(true);
        let w = to_channels_last(&Tensor::randn([k, c, r, r], opts))?.set_requires_grad(true);
        let mut cells = [String::new(), String::new(), String::new(), String::new()];
        for gemm in [false, true] {
            let conv = || -> Result<Tensor> {
                Ok(if gemm {
                    conv_gemm(&x, &w, stride, pad, Plan::ALL)?
                        .ok_or("the shim did not take the convolution")?
                } else {
                    x.conv2d(&w, None::<&Tensor>, [stride, stride], [pad, pad], [1, 1], 1)
                })
            };
            let y = conv()?;
            let forward = median_ms(|| drop(tch::no_grad(conv)));
            let input = median_ms(|| drop(Tensor::run_backward(&[&y], &[&x], true, false)));
            let weight = median_ms(|| drop(Tensor::run_backward(&[&y], &[&w], true, false)));
            let both = median_ms(|| drop(Tensor::run_backward(&[&y], &[&x, &w], true, false)));
            for (cell, ms) in cells.iter_mut().zip([forward, input, weight, both]) {
                let sep = if gemm { " / " } else { "" };
                cell.push_str(&format!("{sep}{ms:.1}"));
            }
        }
        let layer = format!("{r}×{r} s{stride}, {c}→{k}, {side}×{side}");
        println!("| {layer} | {} | {} | {} | {} |", cells[0], cells[1], cells[2], cells[3]);
    }
    Ok(())
}

/// One layer of `PROBE_SHAPES`: `r,stride,padding,c,k,side`.
fn layer(text: &str) -> Result<(i64, i64, i64, i64, i64, i64)> {
    let v = text.split(',').map(|n| n.trim().parse()).collect::<std::result::Result<Vec<i64>, _>>();
    match v.as_deref() {
        Ok(&[r, stride, padding, c, k, side]) => Ok((r, stride, padding, c, k, side)),
        _ => Err(format!("PROBE_SHAPES: {text:?} is not r,stride,padding,c,k,side").into()),
    }
}
