//! `cargo xtask bench data [--threads 2] [--images32 N] [--images96 N] [--skip-python]`:
//! times the SimCLR two-view pipeline of `selfsup-data` (release build of
//! `crates/data/examples/bench_pipeline.rs`) and the same pipeline in torchvision
//! (`bench/torchvision_pipeline.py`: transforms v1 on PIL images, `DataLoader` with as many
//! workers as we use threads), at 32 px and 96 px, prints both in images per second with the
//! ratio, and writes `results/bench/data.json`.
//!
//! Expects the libtorch environment (`LIBTORCH`, `LD_LIBRARY_PATH`) and `SELFSUP_PYTHON` to be
//! set, as `tasks::bench` does, and the data folder in `SELFSUP_DATA` (default `datasets/`).
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub(crate) const USAGE: &str =
    "usage: cargo xtask bench data [--threads 2] [--images32 N] [--images96 N] [--skip-python]";

struct Opts {
    threads: usize,
    images32: Option<usize>,
    images96: Option<usize>,
    skip_python: bool,
}

/// The value after option `name` in `it`, as a number; errors name the option and `usage`.
pub fn number(it: &mut std::slice::Iter<'_, String>, name: &str, usage: &str) -> Result<usize> {
    let v = it.next().with_context(|| format!("{name} needs a value; {usage}"))?;
    v.parse().with_context(|| format!("{name}: `{v}` is not a number"))
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts { threads: 2, images32: None, images96: None, skip_python: false };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| number(&mut it, name, USAGE);
        match a.as_str() {
            "--threads" => o.threads = num("--threads")?,
            "--images32" => o.images32 = Some(num("--images32")?),
            "--images96" => o.images96 = Some(num("--images96")?),
            "--skip-python" => o.skip_python = true,
            other => bail!("unknown option `{other}`; {USAGE}"),
        }
    }
    Ok(o)
}

/// Runs a command and parses each stdout line that is a JSON object.
fn json_lines(mut cmd: Command) -> Result<Vec<Value>> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect())
}

fn rate(rows: &[Value], size: u64) -> Option<(f64, String)> {
    rows.iter().find(|r| r["size"].as_u64() == Some(size)).map(|r| {
        (
            r["images_per_sec"].as_f64().unwrap_or(0.0),
            r["source"].as_str().unwrap_or("").to_string(),
        )
    })
}

/// Entry point.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let data_dir =
        std::env::var_os("SELFSUP_DATA").map_or_else(|| PathBuf::from("datasets"), PathBuf::from);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(&cargo)
        .args(["build", "--release", "-p", "selfsup-data", "--example", "bench_pipeline"])
        .status()
        .context("cannot run cargo")?;
    if !st.success() {
        bail!("building the bench_pipeline example failed ({st})");
    }
    let mut rust = Command::new("target/release/examples/bench_pipeline");
    rust.arg("--data-dir").arg(&data_dir).args(["--threads", &o.threads.to_string()]);
    if let Some(n) = o.images32 {
        rust.args(["--images32", &n.to_string()]);
    }
    if let Some(n) = o.images96 {
        rust.args(["--images96", &n.to_string()]);
    }
    eprintln!("bench data: selfsup-data, {} threads ...", o.threads);
    let ours = json_lines(rust)?;
    let theirs = if o.skip_python {
        Vec::new()
    } else {
        let python = std::env::var("SELFSUP_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut py = Command::new(python);
        py.arg("bench/torchvision_pipeline.py")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--workers", &o.threads.to_string()]);
        eprintln!("bench data: torchvision DataLoader, {} workers ...", o.threads);
        json_lines(py)?
    };
    let cpu = crate::bench_memory::cpu_name();
    println!(
        "SimCLR two-view pipeline, images/s ({} threads vs {} DataLoader workers), {cpu}",
        o.threads, o.threads
    );
    println!("{:>5}  {:>12}  {:>12}  {:>6}  source", "size", "selfsup", "torchvision", "ratio");
    let mut rows = Vec::new();
    for size in [32u64, 96] {
        let Some((ours_ips, source)) = rate(&ours, size) else { continue };
        let theirs_ips = rate(&theirs, size).map(|r| r.0);
        let ratio = theirs_ips.filter(|t| *t > 0.0).map(|t| ours_ips / t);
        println!(
            "{size:>5}  {ours_ips:>12.0}  {:>12}  {:>6}  {source}",
            theirs_ips.map_or("-".into(), |t| format!("{t:.0}")),
            ratio.map_or("-".into(), |r| format!("{r:.1}x")),
        );
        rows.push(serde_json::json!({
            "size": size, "selfsup_images_per_sec": ours_ips,
            "torchvision_images_per_sec": theirs_ips, "ratio": ratio, "source": source,
        }));
    }
    let report = serde_json::json!({
        "command": format!("cargo xtask bench data {}", args.join(" ")).trim_end().to_string(),
        "cpu": cpu,
        "threads": o.threads,
        "rows": rows,
        "selfsup_raw": ours,
        "torchvision_raw": theirs,
    });
    crate::tasks::write_json(std::path::Path::new("results/bench/data.json"), &report)?;
    eprintln!("bench data: wrote results/bench/data.json");
    Ok(())
}
