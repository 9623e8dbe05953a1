//! Times each pass of a stride-1 1×1, 3×3 or 5×5 convolution (fp32, channels-last, batch 128
//! unless set) by libtorch (oneDNN) and by selfsup's Winograd F(2×2, r×r) and F(4×4, r×r) (1×1:
//! matrix products; `selfsup_core::encoders::conv`), at the layer shapes of ResNet-18 (CIFAR
//! stem), the NIN-192, the cpu profiles' AlexNet-24 and NINs, the ImageNet AlexNet's 13×13
//! layers: the measurements behind [`selfsup_core::encoders::conv::plan`]; then the forward
//! pass and the backward pass to the weights of the 4×4 stride-2 convolutions of the context
//! encoder's discriminator, by oneDNN and by F(2×2, 2×2) on the space-to-depth form
//! (`conv_down_winograd`, [`selfsup_core::encoders::conv::plan_down`]).
//! Milliseconds, medians of 7 calls after 2; the backward passes timed alone on a kept graph.
//!
//! With KIND `bf16`: bfloat16 tensors, the 3×3 and 5×5 layers by oneDNN, by F(2×2, 3×3) in
//! bfloat16 (5×5: –, always widened) and by F(4×4, r×r) in float on the widened values (the
//! output rounded to bfloat16; the casts timed with it), each fused where the CPU has
//! AVX512-BF16 (`csrc/winograd_fused.cpp`: every pass of bf16 F(2×2, 3×3) and of F(4×4, 5×5)
//! from 8×8 maps; F(4×4, 3×3): –), then unfused, each with the forward pass's
//! relative RMS error against the float64 convolution of the same bfloat16 values: the
//! measurements behind [`selfsup_core::encoders::conv::plan_bf16`].
//!
//! With KIND `bf16` the 4×4 stride-2 table is bfloat16's too: oneDNN against the fused F(2×2,
//! 2×2) (`csrc/winograd_fused.cpp`, CPUs with AVX512-BF16; the backward pass to the input as
//! four 2×2 correlations, one a parity of the input's pixels, from 16 input channels), each
//! pass's time and relative RMS error against float64: the measurements behind
//! [`selfsup_core::encoders::conv::plan_down_bf16`].
//!
//! Run: `cargo run --release -p selfsup-core --example winograd_probe [-- THREADS [KIND
//! [PIECE_MIB]]]` (default 2 threads; KIND `fp32` (default) or `bf16`);
//! `WINOGRAD_PROBE_TABLE=down` prints the 4×4 stride-2 table alone; `WINOGRAD_PROBE_SIDE=S`
//! keeps the stride-1 rows at maps of `S × S` alone, `WINOGRAD_PROBE_BATCH=N` runs them at batch
//! `N` (128 unless set; CPC's 16-px patches make 1,600 a step).
use selfsup_core::encoders::conv::{conv_down_winograd, conv_winograd, Plan};
use selfsup_core::precision::to_channels_last;
use tch::{Device, Kind, Tensor};

// The C allocator the `selfsup` binary runs on (jemalloc, freed pages kept): crates/alloc.
selfsup_alloc::install!();

mod common;
use common::{median_ms, Result};

fn main() -> Result<()> {
    let (threads, kind, mut args) = common::threads_and_kind(Kind::Float)?;
    let bf16 = kind == Kind::BFloat16;
    // A third argument: the bound on a pass's pieces in MiB (`conv::piece_bytes`; 64 unless
    // given).
    if let Some(mib) = args.next() {
        let mib: i64 = mib.parse()?;
        selfsup_core::encoders::conv::piece_bytes(Some(mib << 20));
        println!("pieces of at most {mib} MiB");
    }
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let batch = env_i64("WINOGRAD_PROBE_BATCH")?.unwrap_or(128);
    let only = env_i64("WINOGRAD_PROBE_SIDE")?;
    if bf16 {
        println!(
            "{threads} threads, bf16 channels-last, batch {batch}; ms per call, oneDNN / Winograd \
             F(2×2, 3×3) bf16 fused / unfused / F(4×4, r×r) widened to fp32 fused / unfused; \
             forward error: relative RMS against float64, in the same order\n"
        );
        println!(
            "| filter, channels, side | forward | backward to input | backward to weights | \
             forward error |"
        );
        println!("|---|---:|---:|---:|---:|");
    } else {
        println!(
            "{threads} threads, fp32 channels-last, batch {batch}; ms per call, oneDNN / Winograd \
             F(2×2, r×r) / F(4×4, r×r) (1×1: oneDNN / matrix products)\n"
        );
        println!("| filter, channels, side | forward | backward to input | backward to weights |");
        println!("|---|---:|---:|---:|");
    }
    // (filter side, channels in, out, map side): ResNet-18's layer1..4, the NIN-192's 3x3
    // blocks 3-4 and its 5x5 convolutions of blocks 2 and 1, the cpu profiles' AlexNet of width
    // 24 (CIFAR variant): conv3, conv4, conv5.
    let shapes = [
        (3, 64, 64, 32),
        (3, 128, 128, 16),
        (3, 256, 256, 8),
        (3, 512, 512, 4),
        (3, 192, 192, 8),
        (5, 96, 192, 16),
        (5, 3, 192, 32),
        (3, 64, 96, 8),
        (3, 96, 96, 8),
        (3, 96, 64, 8),
        // The AlexNet-24's conv2; its conv2 to conv5 on the 16-px tiles of jigsaw and CPC, and
        // on relative-patch's 8-px patches; the paper profiles' ImageNet AlexNet: conv3, conv4,
        // conv5.
        (5, 24, 64, 16),
        (5, 24, 64, 8),
        (3, 64, 96, 4),
        (3, 96, 96, 4),
        (3, 96, 64, 4),
        (5, 24, 64, 4),
        (3, 96, 96, 2),
        (3, 256, 384, 13),
        (3, 384, 384, 13),
        (3, 384, 256, 13),
        // 1x1: the NIN-192's (block 1 at 32x32, block 2 at 16x16, blocks 3-4 at 8x8), a
        // width of 128, and the cpu profiles' NIN-32 and NIN-16 (block 1, block 2).
        (1, 192, 160, 32),
        (1, 160, 96, 32),
        (1, 192, 192, 16),
        (1, 192, 192, 8),
        (1, 128, 128, 16),
        (1, 128, 128, 8),
        (1, 32, 27, 32),
        (1, 32, 32, 16),
        (1, 16, 13, 32),
    ];
    let down_only = std::env::var("WINOGRAD_PROBE_TABLE").is_ok_and(|t| t == "down");
    // The stride-1 rows switch the fused bf16 passes off and on; the 4×4 stride-2 table takes
    // the flag as it was.
    let fused_default = selfsup_core::encoders::conv::fused_bf16(None);
    for (r, c, k, side) in shapes {
        if bf16 && r == 1 || down_only || only.is_some_and(|o| o != side) {
            continue;
        }
        let opts = (kind, Device::Cpu);
        let x =
            to_channels_last(&Tensor::randn([batch, c, side, side], opts))?.set_requires_grad(true);
        let w = to_channels_last(&Tensor::randn([k, c, r, r], opts))?.set_requires_grad(true);
        let pad = (r - 1) / 2;
        let mut cells = [String::new(), String::new(), String::new()];
        // oneDNN, then Winograd in tiles of 2×2 and (3×3, 5×5) of 4×4; bf16: each fused,
        // then unfused (`conv::fused_bf16`).
        let tiles: &[(Option<bool>, bool)] = match (r, bf16) {
            (1, _) => &[(None, false), (Some(false), false)],
            (_, false) => &[(None, false), (Some(false), false), (Some(true), false)],
            _ => &[
                (None, false),
                (Some(false), true),
                (Some(false), false),
                (Some(true), true),
                (Some(true), false),
            ],
        };
        let mut errors = Vec::new();
        for &(tile4, fused) in tiles {
            let winograd = tile4.is_some();
            selfsup_core::encoders::conv::fused_bf16(Some(fused));
            // bf16 5×5 layers run in tiles of 4×4 whatever the plan says (the shim,
            // `csrc/winograd.cpp`: bf16 F(2×2, 5×5) rounds far more than oneDNN).
            if bf16 && r == 5 && tile4 == Some(false)
                || bf16 && r == 3 && tile4 == Some(true) && fused
            {
                cells.iter_mut().for_each(|c| c.push_str(" / –"));
                errors.push(f64::NAN);
                continue;
            }
            let conv = || -> Result<Tensor> {
                Ok(match tile4 {
                    Some(tile4) => conv_winograd(&x, &w, Plan { tile4, ..Plan::ALL })?
                        .ok_or("Winograd did not take the convolution")?,
                    None => x.conv2d(&w, None::<&Tensor>, [1, 1], [pad, pad], [1, 1], 1),
                })
            };
            let y = conv()?;
            if bf16 {
                let [x64, w64] = [&x, &w].map(|t| t.detach().to_kind(Kind::Double));
                let exact = x64.conv2d(&w64, None::<&Tensor>, [1, 1], [pad, pad], [1, 1], 1);
                let diff = (y.detach().to_kind(Kind::Double) - &exact).square().mean(None);
                errors.push((diff / exact.square().mean(None)).sqrt().double_value(&[]));
            }
            let forward = median_ms(|| drop(tch::no_grad(conv)));
            let input = median_ms(|| drop(Tensor::run_backward(&[&y], &[&x], true, false)));
            let weight = median_ms(|| drop(Tensor::run_backward(&[&y], &[&w], true, false)));
            for (cell, ms) in cells.iter_mut().zip([forward, input, weight]) {
                let sep = if winograd { " / " } else { "" };
                cell.push_str(&format!("{sep}{ms:.1}"));
            }
        }
        let layer = format!("{r}×{r}, {c}→{k}, {side}×{side}");
        if bf16 {
            let e: Vec<String> = errors
                .iter()
                .map(|e| if e.is_nan() { "–".to_string() } else { format!("{e:.1e}") })
                .collect();
            let e = e.join(" / ");
            println!("| {layer} | {} | {} | {} | {e} |", cells[0], cells[1], cells[2]);
        } else {
            println!("| {layer} | {} | {} | {} |", cells[0], cells[1], cells[2]);
        }
    }
    selfsup_core::encoders::conv::fused_bf16(Some(fused_default));
    if bf16 {
        return down_bf16();
    }
    println!("\n| 4×4 stride 2, channels, side | forward | backward to weights |");
    println!("|---|---:|---:|");
    for (c, k, side) in DISCRIMINATOR {
        let opts = (Kind::Float, Device::Cpu);
        let x = to_channels_last(&Tensor::randn([128, c, side, side], opts))?;
        let w = to_channels_last(&Tensor::randn([k, c, 4, 4], opts))?.set_requires_grad(true);
        let direct = || x.conv2d(&w, None::<&Tensor>, [2, 2], [1, 1], [1, 1], 1);
        let ours = || -> Result<Tensor> {
            Ok(conv_down_winograd(&x, &w, Plan::ALL)?.ok_or("the shim did not take it")?)
        };
        let f0 = median_ms(|| drop(tch::no_grad(direct)));
        let f1 = median_ms(|| drop(tch::no_grad(ours)));
        let [a, b] = [direct(), ours()?]
            .map(|y| median_ms(|| drop(Tensor::run_backward(&[&y], &[&w], true, false))));
        println!("| {c}→{k}, {side}×{side} | {f0:.1} / {f1:.1} | {a:.1} / {b:.1} |");
    }
    Ok(())
}

/// The value of the environment variable `name` as an integer, if set.
fn env_i64(name: &str) -> Result<Option<i64>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v.parse().map_err(|e| format!("{name}={v:?}: {e}"))?)),
        Err(_) => Ok(None),
    }
}

/// The 4×4 stride-2 layers (channels in, out, input side) of the context encoder's
/// discriminator at its cpu profile (32 px, width 64) and at its paper profile (128 px: the
/// layers after the first).
const DISCRIMINATOR: [(i64, i64, i64); 7] = [
    (3, 64, 32),
    (64, 128, 16),
    (128, 256, 8),
    (64, 128, 64),
    (128, 256, 32),
    (256, 512, 16),
    (512, 512, 8),
];

/// The discriminator's layers (as the fp32 table) in bfloat16: oneDNN against the fused F(2×2,
/// 2×2), each pass's time and relative RMS error against the float64 convolution of the same
/// bfloat16 values.
fn down_bf16() -> Result<()> {
    println!(
        "\n4×4 stride 2, bf16 channels-last, batch 128; ms per call, oneDNN / fused F(2×2, 2×2); \
         errors: relative RMS against float64, oneDNN / fused\n"
    );
    println!(
        "| 4×4 stride 2, channels, side | forward | backward to input | backward to weights | \
         forward error | input error | weight error |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (c, k, side) in DISCRIMINATOR {
        let opts = (Kind::BFloat16, Device::Cpu);
        let x = to_channels_last(&Tensor::randn([128, c, side, side], opts))?;
        let x = x.set_requires_grad(true);
        let w = to_channels_last(&(Tensor::randn([k, c, 4, 4], opts) * 0.1))?;
        let w = w.set_requires_grad(true);
        let direct =
            |x: &Tensor, w: &Tensor| x.conv2d(w, None::<&Tensor>, [2, 2], [1, 1], [1, 1], 1);
        let [x64, w64] = [&x, &w].map(|t| t.detach().to_kind(Kind::Double));
        let x64 = x64.set_requires_grad(true);
        let w64 = w64.set_requires_grad(true);
        let y64 = direct(&x64, &w64);
        let [gx64, gw64] =
            <[Tensor; 2]>::try_from(Tensor::run_backward(&[&y64], &[&x64, &w64], false, false))
                .map_err(|_| "no gradients")?;
        let rel = |a: &Tensor, b: &Tensor| {
            let a = a.detach().to_kind(Kind::Double);
            let d = (&a - b).square().mean(None).double_value(&[]);
            (d / b.square().mean(None).double_value(&[])).sqrt()
        };
        let mut cells = [String::new(), String::new(), String::new()];
        let mut errors = [String::new(), String::new(), String::new()];
        for fused in [false, true] {
            let conv = || -> Result<Tensor> {
                if fused {
                    Ok(conv_down_winograd(&x, &w, Plan::ALL)?.ok_or("the shim did not take it")?)
                } else {
                    Ok(direct(&x, &w))
                }
            };
            let y = match conv() {
                Ok(y) => y,
                Err(e) => {
                    cells.iter_mut().for_each(|c| c.push_str(" / –"));
                    errors.iter_mut().for_each(|c| c.push_str(" / –"));
                    eprintln!("{c}→{k} at {side}: {e}");
                    continue;
                }
            };
            let forward = median_ms(|| drop(tch::no_grad(conv)));
            let input = median_ms(|| drop(Tensor::run_backward(&[&y], &[&x], true, false)));
            let weight = median_ms(|| drop(Tensor::run_backward(&[&y], &[&w], true, false)));
            let [gx, gw] =
                <[Tensor; 2]>::try_from(Tensor::run_backward(&[&y], &[&x, &w], true, false))
                    .map_err(|_| "no gradients")?;
            let sep = if fused { " / " } else { "" };
            for (cell, ms) in cells.iter_mut().zip([forward, input, weight]) {
                cell.push_str(&format!("{sep}{ms:.1}"));
            }
            for (cell, e) in
                errors.iter_mut().zip([rel(&y, &y64), rel(&gx, &gx64), rel(&gw, &gw64)])
            {
                cell.push_str(&format!("{sep}{e:.1e}"));
            }
        }
        let [f, i, wt] = &cells;
        let [ef, ei, ew] = &errors;
        println!("| {c}→{k}, {side}×{side} | {f} | {i} | {wt} | {ef} | {ei} | {ew} |");
    }
    Ok(())
}
