//! `cargo xtask gpu-pack [--out target/gpu-pack] [--no-nccl]` (issue 18, "ready before a GPU
//! is at hand"): everything the project's CUDA checks need on a machine with a GPU and PyTorch
//! 2.11.0 but no Rust toolchain, built here, on a CPU machine. The device machines lent to this
//! project are such machines (no cargo, no datasets; their `python3` has torch 2.11.0 with
//! CUDA), and so are many cluster nodes.
//!
//! Into one folder it puts, stripped of debug information: the release `selfsup` binary (with
//! `--features nccl` unless `--no-nccl`; it links `libtorch_cuda`, see `build.rs`), this xtask
//! (for `gpu-check`), the two test binaries whose `#[ignore]`d tests need CUDA
//! (`selfsup-core`'s library tests: the side-stream prefetch and the pinned batches;
//! `selfsup-dist`'s `nccl` test: the collectives on one GPU), and `run.sh`, the device-side
//! script ([`RUN_SH`]): from the checkout's root it points `LD_LIBRARY_PATH` and
//! `SELFSUP_LIBTORCH` at the folder of `python3`'s torch, prints the GPU, runs the CUDA tests,
//! then `xtask gpu-check --binary <pack>/selfsup` with its own arguments, the console kept
//! in `$OUT/console.log` and the report in `$OUT/gpu-check.json` (`OUT` defaults to
//! `target/gpu-pack-out`). The binaries find libtorch through that library path: the rpath set
//! here points at this machine's torch, which the other machine lacks.
//!
//! The folder is ignored by git (under `target/`); the device tool carries it by name
//! (`carry: ["target/gpu-pack"]`, 64 MiB at most: the sizes are printed, and a pack over it is
//! said to be). Before this command the same steps were typed by hand at each lease
//! (`bench/README.md`, "On a GPU").
use crate::libtorch;
use crate::tasks;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub(crate) const USAGE: &str = "usage: cargo xtask gpu-pack [--out target/gpu-pack] [--no-nccl]\n\
    then on the GPU machine, from the checkout's root: target/gpu-pack/run.sh [gpu-check options]";

/// The files a pack holds.
const PACK_FILES: [&str; 5] = ["selfsup", "xtask", "core-tests", "nccl-tests", "run.sh"];

/// What the device tool carries at most, in bytes.
const CARRY_LIMIT: u64 = 64 << 20;

#[derive(Debug, PartialEq)]
struct Opts {
    out: PathBuf,
    nccl: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts { out: PathBuf::from("target/gpu-pack"), nccl: true };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => {
                let v = it.next().with_context(|| format!("--out needs a value\n{USAGE}"))?;
                o.out = PathBuf::from(v);
            }
            "--no-nccl" => o.nccl = false,
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    Ok(o)
}

/// The device-side script. `@PACK@` becomes the pack's folder as given (relative to the
/// checkout's root, where the script is run from).
const RUN_SH: &str = r#"#!/usr/bin/env bash
# Made by `cargo xtask gpu-pack`. Run from the checkout's root on a machine with a GPU whose
# python3 has torch 2.11.0: @PACK@/run.sh [gpu-check options], e.g. --variants channels-last,fast --no-job.
# Writes $OUT/console.log and $OUT/gpu-check.json (OUT defaults to target/gpu-pack-out).
set -uo pipefail
P=@PACK@
OUT=${OUT:-target/gpu-pack-out}
if [ ! -f bench/train_step.py ]; then
    echo "run.sh: run it from the checkout's root (no bench/train_step.py in $PWD)" >&2
    exit 2
fi
T=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))') || {
    echo "run.sh: python3 cannot import torch" >&2
    exit 2
}
export SELFSUP_LIBTORCH="$T" SELFSUP_PYTHON=python3
export LD_LIBRARY_PATH="$T/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$OUT"
main() {
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import torch; print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version())'
    lscpu | grep -E '^(Model name|CPU\(s\)):'
    echo "== CUDA tests"
    local rc=0
    "$P/core-tests" --ignored || rc=1
    if [ -x "$P/nccl-tests" ]; then "$P/nccl-tests" --ignored || rc=1; fi
    echo "== gpu-check $*"
    "$P/xtask" gpu-check --binary "$P/selfsup" --out "$OUT/gpu-check.json" "$@" || rc=1
    echo "== rc $rc"
    return $rc
}
main "$@" 2>&1 | tee "$OUT/console.log"
"#;

/// The test executables `cargo test --no-run --message-format=json` reports building.
fn test_executables(cargo_json: &str) -> Vec<PathBuf> {
    cargo_json
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["profile"]["test"] == true)
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .collect()
}

/// Builds the test binary of `args` (`cargo test --release --no-run ...`) and returns its path.
fn build_test(t: &libtorch::Torch, args: &[&str]) -> Result<PathBuf> {
    let mut c = tasks::cargo(t);
    c.args(["test", "--release", "--no-run", "--message-format=json-render-diagnostics"]);
    c.args(args).stdout(Stdio::piped());
    let shown = format!("{c:?}");
    let out = c.output().with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({})", out.status);
    }
    match test_executables(&String::from_utf8_lossy(&out.stdout))[..] {
        [ref one] => Ok(one.clone()),
        ref other => bail!("{shown}: expected one test executable, cargo reported {other:?}"),
    }
}

/// `strip -o to from`: the binary without its debug information.
fn strip(from: &Path, to: &Path) -> Result<u64> {
    let mut c = Command::new("strip");
    c.arg("-o").arg(to).arg(from);
    tasks::run(c).with_context(|| format!("stripping {} (binutils' `strip`)", from.display()))?;
    Ok(std::fs::metadata(to).with_context(|| to.display().to_string())?.len())
}

/// Runs the command.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    if o.out.is_absolute() || o.out.components().any(|c| c.as_os_str() == "..") {
        bail!(
            "--out {}: a folder inside the checkout, given relative to its root (run.sh names \
             the binaries by it)",
            o.out.display()
        );
    }
    let t = libtorch::ensure()?;
    let mut c = tasks::cargo(&t);
    c.args(["build", "--release", "--bin", "selfsup"]);
    if o.nccl {
        c.args(["--features", "nccl"]);
    }
    tasks::run(c)?;
    let core = build_test(&t, &["-p", "selfsup-core", "--lib"])?;
    let nccl = if o.nccl {
        Some(build_test(&t, &["-p", "selfsup-dist", "--features", "nccl", "--test", "nccl"])?)
    } else {
        None
    };
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    // The pack's own files only (a previous pack's `nccl-tests` among them): `--out` may name a
    // folder that holds other things.
    for name in PACK_FILES {
        let _ = std::fs::remove_file(o.out.join(name));
    }
    let mut parts = vec![
        (PathBuf::from("target/release/selfsup"), "selfsup"),
        (xtask, "xtask"),
        (core, "core-tests"),
    ];
    if let Some(n) = nccl {
        parts.push((n, "nccl-tests"));
    }
    let mut total = 0;
    for (from, name) in &parts {
        let bytes = strip(from, &o.out.join(name))?;
        println!(
            "gpu-pack: {name:<11} {:>6.1} MiB  (from {})",
            bytes as f64 / 1048576.0,
            from.display()
        );
        total += bytes;
    }
    let script = o.out.join("run.sh");
    let pack = o.out.to_string_lossy().replace('\\', "/");
    tasks::write_atomic(&script, &RUN_SH.replace("@PACK@", &pack))?;
    make_executable(&script)?;
    println!("gpu-pack: {} MiB in {}", total >> 20, o.out.display());
    if total > CARRY_LIMIT {
        println!(
            "gpu-pack: over the device tool's 64 MiB carry limit ({} MiB): --no-nccl drops the \
             NCCL test",
            total >> 20
        );
    }
    println!(
        "on the GPU machine, from the checkout's root: {}/run.sh [gpu-check options]",
        o.out.display()
    );
    Ok(())
}

#[cfg(unix)]
fn make_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", p.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args as s;

    #[test]
    fn options() {
        let o = parse(&[]).unwrap();
        assert_eq!(o, Opts { out: PathBuf::from("target/gpu-pack"), nccl: true });
        let o = parse(&s(&["--out", "target/p", "--no-nccl"])).unwrap();
        assert_eq!(o, Opts { out: PathBuf::from("target/p"), nccl: false });
        assert!(parse(&s(&["--out"])).unwrap_err().to_string().contains("--out needs a value"));
        assert!(parse(&s(&["--nccl"])).unwrap_err().to_string().contains("`--nccl`"));
    }

    #[test]
    fn the_test_executables_cargo_reports() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"selfsup_core"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"name":"selfsup_core"},"profile":{"test":true},"executable":"/w/target/release/deps/selfsup_core-0a1b"}
{"reason":"build-script-executed","package_id":"x"}
not json
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executables(json),
            [PathBuf::from("/w/target/release/deps/selfsup_core-0a1b")]
        );
        assert!(test_executables("").is_empty());
    }

    #[test]
    fn the_script_names_the_pack_and_runs_from_the_root() {
        let sh = RUN_SH.replace("@PACK@", "target/gpu-pack");
        assert!(!sh.contains("@PACK@"), "every placeholder filled");
        assert!(sh.starts_with("#!/usr/bin/env bash\n"));
        assert!(sh.contains("P=target/gpu-pack\n"));
        assert!(sh.contains(
            r#""$P/xtask" gpu-check --binary "$P/selfsup" --out "$OUT/gpu-check.json" "$@""#
        ));
        assert!(sh.contains(r#""$P/core-tests" --ignored"#));
    }

    /// Writes an executable shell script.
    fn script(path: &Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        make_executable(path).unwrap();
    }

    /// `run.sh` on a stand-in machine: a checkout root, a pack of scripts standing in for the
    /// binaries, and `python3`, `nvidia-smi` and `lscpu` on `PATH` standing in for the tools.
    #[test]
    fn the_script_runs_the_tests_then_gpu_check_and_reports_a_failure() {
        if Command::new("bash").arg("-c").arg("true").status().is_err() {
            return; // no bash here: nothing to run it with
        }
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("bench")).unwrap();
        std::fs::write(r.join("bench/train_step.py"), "").unwrap();
        let tools = r.join("tools");
        let pack = r.join("target/gpu-pack");
        std::fs::create_dir_all(&tools).unwrap();
        std::fs::create_dir_all(&pack).unwrap();
        script(
            &tools.join("python3"),
            "case \"$2\" in *dirname*) echo /opt/torch;; *) echo torch 2.11.0;; esac",
        );
        script(&tools.join("nvidia-smi"), "echo NVIDIA H200, 143771 MiB");
        script(&tools.join("lscpu"), "echo 'Model name: Stand-in'");
        script(&pack.join("core-tests"), "echo core-tests \"$@\"");
        script(&pack.join("nccl-tests"), "echo nccl-tests \"$@\"");
        script(&pack.join("xtask"), "echo xtask \"$@\" LD=$LD_LIBRARY_PATH LT=$SELFSUP_LIBTORCH");
        let sh = pack.join("run.sh");
        std::fs::write(&sh, RUN_SH.replace("@PACK@", "target/gpu-pack")).unwrap();
        make_executable(&sh).unwrap();
        let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
        let run = || {
            Command::new("target/gpu-pack/run.sh")
                .args(["--variants", "tuned"])
                .current_dir(r)
                .env("PATH", &path)
                .env("OUT", "out")
                .env_remove("LD_LIBRARY_PATH")
                .output()
                .unwrap()
        };
        let out = run();
        let console = std::fs::read_to_string(r.join("out/console.log")).unwrap();
        assert!(out.status.success(), "{console}");
        let at =
            |needle: &str| console.find(needle).unwrap_or_else(|| panic!("{needle}: {console}"));
        assert!(at("NVIDIA H200") < at("core-tests --ignored"));
        assert!(at("core-tests --ignored") < at("nccl-tests --ignored"));
        assert!(at("nccl-tests --ignored") < at("xtask gpu-check"));
        at("xtask gpu-check --binary target/gpu-pack/selfsup --out out/gpu-check.json --variants tuned \
            LD=/opt/torch/lib LT=/opt/torch");
        assert!(console.trim_end().ends_with("== rc 0"), "{console}");
        // A failing CUDA test: gpu-check still runs, and the script fails.
        script(&pack.join("core-tests"), "echo core-tests failed; exit 101");
        let out = run();
        let console = std::fs::read_to_string(r.join("out/console.log")).unwrap();
        assert!(!out.status.success(), "{console}");
        assert!(console.contains("xtask gpu-check") && console.trim_end().ends_with("== rc 1"));
        // Run from elsewhere: refused, naming the folder.
        let out = Command::new(&sh).current_dir(&tools).env("PATH", &path).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("run it from the checkout's root"));
    }
}
