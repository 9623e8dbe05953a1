//! Throughput of the SimCLR two-view pipeline through the full [`Loader`] (augmentation,
//! batch assembly into tensors, prefetch queue), in images per second (each image yields two
//! views). Run by `cargo xtask bench data` in release mode:
//!
//! ```text
//! bench_pipeline [--data-dir DIR] [--threads 2] [--batch 256] [--images32 20000] [--images96 3000]
//! ```
//! Prints one JSON object per image size. At 96 px the source is STL-10's train split when
//! `DIR/stl10_binary` exists, else CIFAR-10 upscaled by the random resized crop.
use std::path::PathBuf;
use std::time::Instant;

use selfsup_data::pipeline::{CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD};
use selfsup_data::{
    open_dataset, resolve_data_dir, ImageDataset, Loader, LoaderConfig, Pipeline, Split,
};

// The C allocator the `selfsup` binary runs on (jemalloc, freed pages kept): crates/alloc.
selfsup_alloc::install!();

struct Args {
    data_dir: PathBuf,
    threads: usize,
    batch: usize,
    images32: usize,
    images96: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        data_dir: resolve_data_dir(None),
        threads: 2,
        batch: 256,
        images32: 20_000,
        images96: 3_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num =
            || value.parse::<usize>().map_err(|_| format!("{flag}: `{value}` is not a number"));
        match flag.as_str() {
            "--data-dir" => a.data_dir = PathBuf::from(&value),
            "--threads" => a.threads = num()?,
            "--batch" => a.batch = num()?,
            "--images32" => a.images32 = num()?,
            "--images96" => a.images96 = num()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// Runs the loader over `images` images (after one warm-up batch); returns images per second.
fn time_loader(
    ds: &ImageDataset,
    view: Pipeline,
    a: &Args,
    images: usize,
) -> Result<(f64, usize), String> {
    let n = images.min(ds.len());
    let ds = ds.subset(&(0..n).collect::<Vec<_>>());
    let cfg = LoaderConfig {
        batch_size: a.batch,
        shuffle: true,
        drop_last: true,
        seed: 0,
        prefetch: 2,
        threads: a.threads,
        ..Default::default()
    };
    let loader = Loader::new(ds, vec![view.clone(), view], cfg).map_err(|e| e.to_string())?;
    let mut it = loader.epoch(0);
    it.next().ok_or("no batch")?.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut count = 0;
    let mut checksum = 0f64;
    for b in it {
        let b = b.map_err(|e| e.to_string())?;
        // Touch the output so nothing is optimised away.
        checksum += b.views[1].double_value(&[0, 0, 0, 0]);
        count += b.len();
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(checksum);
    Ok((count as f64 / secs, count))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    let cifar = open_dataset("cifar10", Split::Train, &a.data_dir).map_err(|e| e.to_string())?;
    let (ips, n) =
        time_loader(&cifar, Pipeline::simclr(32, &CIFAR10_MEAN, &CIFAR10_STD), &a, a.images32)?;
    println!(
        r#"{{"size": 32, "images_per_sec": {ips:.1}, "images": {n}, "threads": {}, "batch": {}, "source": "cifar10 train"}}"#,
        a.threads, a.batch
    );
    let (src, name) = match open_dataset("stl10", Split::Train, &a.data_dir) {
        Ok(stl) => (stl, "stl10 train (96 px)"),
        Err(_) => (cifar, "cifar10 train upscaled from 32 px"),
    };
    let (ips, n) =
        time_loader(&src, Pipeline::simclr(96, &IMAGENET_MEAN, &IMAGENET_STD), &a, a.images96)?;
    println!(
        r#"{{"size": 96, "images_per_sec": {ips:.1}, "images": {n}, "threads": {}, "batch": {}, "source": "{name}"}}"#,
        a.threads, a.batch
    );
    Ok(())
}
