//! `cargo xtask bench train`: steady-state RotNet training throughput of the `selfsup` binary
//! against the same steps in PyTorch (`bench/rotnet_step.py`), on the same machine and threads.
//!
//! selfsup's step time is taken as the difference of two runs (`max_steps` = 2 and 2 + N) so that
//! start-up and the first steps' kernel selection are excluded, as the Python script excludes
//! its warm-up step. Both use fp32 and the same NIN, batch and thread count.
use crate::libtorch::Torch;
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Instant;

struct Opts {
    width: u32,
    batch: u32,
    steps: u32,
    threads: u32,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts { width: 192, batch: 32, steps: 5, threads: 2 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        let n: u32 = v.parse().with_context(|| format!("{a} {v}: not a number"))?;
        match a.as_str() {
            "--width" => o.width = n,
            "--batch" => o.batch = n,
            "--steps" => o.steps = n,
            "--threads" => o.threads = n,
            other => bail!("unknown option `{other}` (--width, --batch, --steps, --threads)"),
        }
    }
    Ok(o)
}

fn selfsup_seconds(bin: &std::path::Path, t: &Torch, o: &Opts, steps: u32) -> Result<f64> {
    let dir =
        std::env::temp_dir().join(format!("selfsup-bench-train-{}-{steps}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = Command::new(bin);
    t.apply(&mut c);
    c.args(["train", "--method", "rotnet", "--device", "cpu", "--no-progress", "--out"])
        .arg(&dir)
        .args(["--data", &format!("synthetic:{}:32", o.batch * (steps + 1))])
        .args([
            "--set",
            &format!("encoder={{\"kind\":\"nin\",\"blocks\":4,\"width\":{}}}", o.width),
        ])
        .args(["--set", &format!("train.batch_size={}", o.batch)])
        .args(["--set", &format!("train.max_steps={steps}")])
        .args(["--set", &format!("train.threads={}", o.threads)])
        .args(["--set", "train.deterministic=false"])
        .env("RUST_LOG", "warn");
    let start = Instant::now();
    let out = c.output().context("running selfsup")?;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!("selfsup train failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(secs)
}

/// Refuses a step time taken from two runs whose difference is lost in the start-up time
/// (a small, fast configuration with few `--steps`): the `steps` timed steps must take at
/// least a quarter of the short run's `short` seconds.
fn check_difference(short: f64, long: f64, steps: u32) -> Result<()> {
    let timed = long - short;
    if timed < 0.25 * short {
        bail!(
            "--steps {steps}: the timed steps took {timed:.2} s against {short:.2} s of start-up \
             and warm-up, too little for a stable difference; pass a larger --steps"
        );
    }
    Ok(())
}

/// Runs the benchmark and prints both throughputs and their ratio.
pub fn run(t: &Torch, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let bin = crate::tasks::build_release()?;
    let short = selfsup_seconds(&bin, t, &o, 2)?;
    let long = selfsup_seconds(&bin, t, &o, 2 + o.steps)?;
    check_difference(short, long, o.steps)?;
    let step = (long - short) / o.steps as f64;
    let ours = o.batch as f64 / step;
    let out = Command::new(&t.python)
        .arg("bench/rotnet_step.py")
        .args(["--width", &o.width.to_string(), "--batch", &o.batch.to_string()])
        .args(["--steps", &o.steps.to_string(), "--threads", &o.threads.to_string()])
        .output()
        .context("running bench/rotnet_step.py")?;
    if !out.status.success() {
        bail!("bench/rotnet_step.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("rotnet_step.py output")?;
    let torch = v["images_per_s"].as_f64().context("images_per_s missing")?;
    println!(
        "RotNet NIN width {} batch {} (x4 rotations), {} threads, fp32, CPU:",
        o.width, o.batch, o.threads
    );
    println!("  selfsup  {ours:8.2} source images/s ({step:.3} s/step)");
    println!("  PyTorch  {torch:8.2} source images/s");
    println!("  ratio    {:8.2}x", ours / torch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_lost_in_start_up_is_refused() {
        assert!(check_difference(2.0, 4.0, 5).is_ok());
        let err = check_difference(2.0, 2.1, 8).unwrap_err().to_string();
        assert!(err.contains("--steps 8") && err.contains("larger --steps"), "{err}");
        assert!(check_difference(2.0, 1.9, 8).is_err());
    }
}
