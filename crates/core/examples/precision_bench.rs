//! Forward + backward throughput of a NIN-like convolution stack (RotNet's building block: three
//! 3×3 convolutions with batch norm and ReLU at 192 channels) in fp32, bf16 autocast, and bf16
//! autocast with channels-last, to choose the `precision`/`channels_last` settings of a profile.
//!
//! ```text
//! cargo run --release -p selfsup-core --example precision_bench -- [--device cpu|cuda:0]
//!     [--batch 128] [--size 32] [--width 192] [--iters 3] [--threads N]
//!     [--modes fp32,fp32-cl,bf16,bf16-cl]
//! ```
//! Prints one line per mode (`-cl`: channels-last) with images/s (median over the timed
//! iterations, after one warm-up iteration), and the relative difference of the loss to the
//! first mode run.
use std::time::Instant;

use selfsup_core::precision::{autocast, set_channels_last, to_channels_last, Precision};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

// The C allocator the `selfsup` binary runs on (jemalloc, freed pages kept): crates/alloc.
selfsup_alloc::install!();

struct Args {
    device: Device,
    batch: i64,
    size: i64,
    width: i64,
    iters: usize,
    threads: Option<i32>,
    modes: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        device: Device::Cpu,
        batch: 128,
        size: 32,
        width: 192,
        iters: 3,
        threads: None,
        modes: vec![],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--device" => {
                args.device = selfsup_core::device::parse_device(&value).map_err(|e| bad(&e))?
            }
            "--batch" => args.batch = value.parse().map_err(|e| bad(&e))?,
            "--size" => args.size = value.parse().map_err(|e| bad(&e))?,
            "--width" => args.width = value.parse().map_err(|e| bad(&e))?,
            "--iters" => args.iters = value.parse().map_err(|e| bad(&e))?,
            "--threads" => args.threads = Some(value.parse().map_err(|e| bad(&e))?),
            "--modes" => args.modes = value.split(',').map(str::to_owned).collect(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// conv 3×3 → batch norm → ReLU, three times: in → width → width → width.
fn nin_stack(p: &nn::Path, width: i64) -> nn::SequentialT {
    let conv = nn::ConvConfig { padding: 1, bias: false, ..Default::default() };
    let mut seq = nn::seq_t();
    for (i, c_in) in [3, width, width].into_iter().enumerate() {
        seq = seq
            .add(nn::conv2d(p / format!("conv{i}"), c_in, width, 3, conv))
            .add(nn::batch_norm2d(p / format!("bn{i}"), width, Default::default()))
            .add_fn(|x| x.relu());
    }
    seq
}

struct Mode {
    name: &'static str,
    precision: Precision,
    channels_last: bool,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    println!(
        "device {:?}, threads {}, batch {}, {}x{}, width {}, cpu bf16 support: {}",
        args.device,
        tch::get_num_threads(),
        args.batch,
        args.size,
        args.size,
        args.width,
        selfsup_core::precision::cpu_supports_bf16()
    );
    let modes = [
        Mode { name: "fp32", precision: Precision::Fp32, channels_last: false },
        Mode { name: "fp32-cl", precision: Precision::Fp32, channels_last: true },
        Mode { name: "bf16", precision: Precision::Bf16, channels_last: false },
        Mode { name: "bf16-cl", precision: Precision::Bf16, channels_last: true },
    ];
    if let Some(m) = args.modes.iter().find(|m| !modes.iter().any(|mode| mode.name == *m)) {
        return Err(format!("unknown mode {m} (known: fp32, fp32-cl, bf16, bf16-cl)").into());
    }
    let mut fp32_loss = None;
    for mode in
        modes.iter().filter(|m| args.modes.is_empty() || args.modes.iter().any(|n| n == m.name))
    {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(args.device);
        let net = nin_stack(&vs.root(), args.width);
        if mode.channels_last {
            set_channels_last(&vs)?;
        }
        let x = Tensor::randn([args.batch, 3, args.size, args.size], (Kind::Float, args.device));
        let x = if mode.channels_last { to_channels_last(&x)? } else { x };
        let mut times = Vec::new();
        let mut loss_value = 0.0;
        for iter in 0..=args.iters {
            sync(args.device);
            let start = Instant::now();
            let loss = autocast(args.device, mode.precision, || {
                net.forward_t(&x, true).square().mean(Kind::Float)
            });
            for mut v in vs.trainable_variables() {
                v.zero_grad();
            }
            loss.backward();
            loss_value = loss.double_value(&[]);
            sync(args.device);
            if iter > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let reference = *fp32_loss.get_or_insert(loss_value);
        println!(
            "{:<20} {:>9.1} images/s  ({:.3} s/iter, median of {}; loss rel. diff to first mode {:.1e})",
            mode.name,
            args.batch as f64 / median,
            median,
            times.len(),
            ((loss_value - reference) / reference).abs()
        );
    }
    Ok(())
}
