//! `cargo xtask fuzz [--seconds N] [TARGET ...]`: the cargo-fuzz targets of `fuzz/` (every
//! reader of outside bytes: `cifar`, `idx`, `stl10`, `image`, `npy`, `checkpoint`, `config`),
//! built with the nightly toolchain and run one after another for `N` seconds each (default
//! 60) from the committed seeds (`fuzz/seeds/<target>/`) into a working corpus
//! (`fuzz/corpus/<target>/`, not committed). Prints, and writes to `results/bench/fuzz.json`,
//! each target's inputs run, seconds, corpus size and what it found (a crash's input is kept
//! by libFuzzer under `fuzz/artifacts/<target>/`).
//!
//! Built without a sanitizer (`-s none`): the targets link libtorch, which is not built for
//! AddressSanitizer; libFuzzer still catches panics, aborts, timeouts and memory blow-ups
//! (`-rss_limit_mb`). Needs `rustup toolchain install nightly` and `cargo install cargo-fuzz`.
use crate::libtorch::Torch;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Every target, in run order.
pub const TARGETS: [&str; 7] = ["cifar", "idx", "stl10", "image", "npy", "checkpoint", "config"];

pub(crate) const USAGE: &str = "usage: cargo xtask fuzz [--seconds N] [TARGET ...]";

/// What one target's run found.
#[derive(Debug)]
struct Outcome {
    target: String,
    runs: u64,
    seconds: u64,
    corpus: usize,
    found: String,
}

/// `cargo +nightly fuzz ...` in `fuzz/` with the libtorch environment.
fn cargo_fuzz(t: &Torch) -> Command {
    let mut c = Command::new("cargo");
    t.apply(&mut c);
    c.env_remove("CARGO").env_remove("RUSTC").env("RUSTUP_TOOLCHAIN", "nightly");
    c.arg("fuzz");
    c
}

/// libFuzzer's closing line, `Done 123 runs in 60 second(s)`: the runs and seconds.
pub fn done_line(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().rev().find(|l| l.starts_with("Done ") && l.contains(" runs in "))?;
    let mut words = line.split_whitespace();
    let runs = words.nth(1)?.parse().ok()?;
    let seconds = words.nth(2)?.parse().ok()?;
    Some((runs, seconds))
}

/// What a failed run found, from libFuzzer's report: the kind and the kept input.
fn finding(stderr: &str) -> String {
    let kind = stderr
        .lines()
        .find(|l| l.contains("panicked at") || l.starts_with("==") && l.contains("ERROR"))
        .unwrap_or("libFuzzer stopped")
        .trim()
        .to_string();
    let input = stderr
        .lines()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim().to_string()));
    match input {
        Some(p) => format!("{kind} (input: {p})"),
        None => kind,
    }
}

pub fn run(t: &Torch, args: &[String]) -> Result<()> {
    let mut seconds = 60usize;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = crate::bench_data::number(&mut it, "--seconds", USAGE)?,
            t if TARGETS.contains(&t) => targets.push(t.to_string()),
            other => bail!(
                "unknown fuzz target or option `{other}` (targets: {}); {USAGE}",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|s| s.to_string()).collect();
    }
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("RUSTUP_TOOLCHAIN", "nightly")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "cargo-fuzz on the nightly toolchain is needed: `rustup toolchain install nightly` \
             and `cargo install cargo-fuzz`"
        );
    }
    let status = cargo_fuzz(t)
        .args(["build", "-O", "-s", "none"])
        .current_dir("fuzz")
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed");
    }
    let mut outcomes = Vec::new();
    for target in &targets {
        let corpus = Path::new("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        eprintln!("xtask: fuzzing `{target}` for {seconds} s");
        let out = cargo_fuzz(t)
            .args(["run", "-O", "-s", "none", target])
            .arg(Path::new("corpus").join(target))
            .arg(Path::new("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=4096", "-timeout=20", "-max_len=65536", "-print_final_stats=1"])
            .current_dir("fuzz")
            .output()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (runs, secs) = done_line(&stderr).unwrap_or((0, 0));
        let found = if out.status.success() { "nothing".to_string() } else { finding(&stderr) };
        let size = std::fs::read_dir(&corpus)?.count();
        println!("{target:<11} {runs:>10} inputs in {secs:>4} s, corpus {size:>5}: {found}");
        outcomes.push(Outcome { target: target.clone(), runs, seconds: secs, corpus: size, found });
    }
    std::fs::create_dir_all("results/bench")?;
    let json = serde_json::json!({
        "cpu": crate::bench_memory::cpu_name(),
        "seconds_per_target": seconds,
        "sanitizer": "none (libFuzzer: panics, aborts, timeouts over 20 s, memory over 4 GiB)",
        "targets": outcomes.iter().map(|o| serde_json::json!({
            "target": o.target, "runs": o.runs, "seconds": o.seconds, "corpus": o.corpus,
            "found": o.found,
        })).collect::<Vec<_>>(),
    });
    crate::tasks::write_json(std::path::Path::new("results/bench/fuzz.json"), &json)?;
    println!("wrote results/bench/fuzz.json");
    if outcomes.iter().any(|o| o.found != "nothing") {
        bail!("a fuzz target found a failing input (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_s_closing_line_and_findings() {
        let log = "#1024 pulse cov: 10\nDone 73711 runs in 61 second(s)\nstat::number_of_executed_units: 73711\n";
        assert_eq!(done_line(log), Some((73711, 61)));
        assert_eq!(done_line("INFO: nothing"), None);
        let crash = "thread '<unnamed>' panicked at src/x.rs:3:5:\nboom\n==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='artifacts/cifar/'; Test unit written to artifacts/cifar/crash-abc\n";
        assert_eq!(
            finding(crash),
            "thread '<unnamed>' panicked at src/x.rs:3:5: (input: artifacts/cifar/crash-abc)"
        );
    }
}
