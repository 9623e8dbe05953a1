//! The xtask commands: each makes sure libtorch is present, then runs cargo or the release
//! binary with the right environment.
use crate::libtorch::{self, Torch};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Runs a command to completion, failing with its command line on a non-zero exit.
pub(crate) fn run(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

/// `cargo` with the libtorch environment.
pub(crate) fn cargo(t: &Torch) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    t.apply(&mut c);
    c
}

/// Points `SELFSUP_DATA` at `../shared/datasets` when it is unset and that folder exists.
fn default_data_dir() {
    if std::env::var_os("SELFSUP_DATA").is_some() {
        return;
    }
    let shared = PathBuf::from("../shared/datasets");
    if shared.is_dir() {
        if let Ok(abs) = shared.canonicalize() {
            eprintln!("xtask: SELFSUP_DATA={} (../shared/datasets)", abs.display());
            std::env::set_var("SELFSUP_DATA", abs);
        }
    }
}

/// `cargo xtask env`: shell exports for plain cargo.
pub fn env() -> Result<()> {
    let t = libtorch::ensure()?;
    for (k, v) in t.envs() {
        println!("export {k}='{v}'");
    }
    Ok(())
}

/// Builds the release binary and returns its path.
pub fn build_release() -> Result<PathBuf> {
    let t = libtorch::ensure()?;
    let mut c = cargo(&t);
    c.args(["build", "--release", "--bin", "selfsup"]);
    run(c)?;
    Ok(PathBuf::from("target/release/selfsup"))
}

/// `cargo xtask run -- <args>`.
pub fn run_binary(args: &[String]) -> Result<()> {
    let bin = build_release()?;
    let args = args.strip_prefix(&["--".to_string()]).unwrap_or(args);
    default_data_dir();
    let mut c = Command::new(bin);
    c.args(args);
    libtorch::ensure()?.apply(&mut c);
    run(c)
}

/// `cargo xtask test`: fmt check, clippy with `-D warnings`, all tests.
pub fn test(args: &[String]) -> Result<()> {
    let t = libtorch::ensure()?;
    default_data_dir();
    let mut fmt = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt).context("formatting differs: run `cargo fmt --all`")?;
    let mut clippy = cargo(&t);
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run(clippy)?;
    // The NCCL backend is not in the default build (it needs CUDA's headers): compiled and
    // linted here so that it does not rot, run only where a GPU is (`gpu-check`).
    if libtorch::cuda_headers(&t.libtorch).is_some() {
        let mut nccl = cargo(&t);
        nccl.args(["clippy", "-p", "selfsup-dist", "--features", "nccl", "--all-targets"]);
        nccl.args(["--", "-D", "warnings"]);
        run(nccl)?;
    } else {
        eprintln!("xtask: no CUDA headers beside torch: the `nccl` feature is not checked");
    }
    let mut test = cargo(&t);
    test.args(["test", "--workspace"]).args(args);
    run(test)
}

/// `cargo xtask reproduce <method> ...`: builds the release binary and runs
/// `selfsup reproduce <method> ...`.
pub fn reproduce(args: &[String]) -> Result<()> {
    if args.is_empty() {
        bail!("usage: cargo xtask reproduce <method> [--profile smoke|cpu|paper] [--force]");
    }
    let bin = build_release()?;
    default_data_dir();
    let mut c = Command::new(bin);
    c.arg("reproduce").args(args);
    libtorch::ensure()?.apply(&mut c);
    run(c)
}

/// `cargo xtask bench <what>`.
pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some(what @ ("data" | "memory")) => {
            let t = libtorch::ensure()?;
            default_data_dir();
            for (k, v) in t.envs() {
                std::env::set_var(k, v);
            }
            if what == "data" {
                crate::bench_data::run(&args[1..])
            } else {
                crate::bench_memory::run(&args[1..])
            }
        }
        Some("train") => {
            let t = libtorch::ensure()?;
            crate::bench_train::run(&t, &args[1..])
        }
        Some(other) => bail!("unknown benchmark `{other}` (known: data, train, memory)"),
        None => bail!("usage: cargo xtask bench data|train|memory"),
    }
}

/// `cargo xtask fetch <dataset>`.
pub fn fetch(args: &[String]) -> Result<()> {
    crate::fetch::run(args)
}
