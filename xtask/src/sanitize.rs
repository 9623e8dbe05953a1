//! `cargo xtask sanitize [--all] [-- TEST ARGS]`: tests with selfsup's C++ shims compiled
//! under AddressSanitizer (`SELFSUP_SHIM_SANITIZE=address`, read by `selfsup-shim-build`).
//! Every load and store of selfsup's C++ is checked against the bounds of the allocation it
//! reaches, libtorch's tensors included (its CPU allocator ends in `posix_memalign`, which the
//! runtime intercepts). A kernel's read or write past a tensor's end, which an ordinary test
//! sees only when it lands in what the test compares, stops the test with its report.
//!
//! Which tests: by default the library and integration tests of the crates with C++ shims,
//! `selfsup-core` (the CPU kernels: batch norm + ReLU, convolutions, pools, fused optimizers)
//! and `selfsup-dist` (the store, collectives and reducer hooks). With `--all`, every library
//! crate's tests, so the methods' trainings run the kernels on their own shapes and modes. Left
//! out there:
//! - the root package (the `selfsup` binary and its end-to-end tests) and `selfsup-alloc`:
//!   they run on jemalloc's `malloc`, which cannot share a process with the sanitizer's;
//! - `selfsup-data`: no C++, and its download tests' `curl` deadlocks with the runtime
//!   preloaded;
//! - `xtask`: its tests run cargo.
//!
//! Built in release (the kernels as they run; the tests would take hours unoptimised) into a
//! target folder of its own (`target/asan/`), libtorch and the Rust code left uninstrumented.
//! The test binaries run with GCC's `libasan.so` preloaded (the runtime must come first in
//! the process, before libtorch) through cargo's runner, so cargo and rustc themselves run
//! without it; leak detection is off (libtorch keeps its registries to the end by design).
//! Needs GCC's AddressSanitizer runtime (`libasan8` on Debian 12, installed with `g++`).
use crate::libtorch;
use crate::tasks;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const USAGE: &str = "usage: cargo xtask sanitize [--all] [-- TEST ARGS]\n\
    e.g. cargo xtask sanitize          (selfsup-core's and selfsup-dist's tests)\n\
    \x20    cargo xtask sanitize --all    (every library crate's tests)\n\
    \x20    cargo xtask sanitize -- pool  (the tests whose names contain `pool`)";

/// The crates whose tests run: those with C++ shims.
pub(crate) const CRATES: [&str; 2] = ["selfsup-core", "selfsup-dist"];

/// The runtime's options: reports stop the test (non-zero exit), leaks are not reported.
pub(crate) const ASAN_OPTIONS: &str = "detect_leaks=0:abort_on_error=0:halt_on_error=1";

/// The path of the C++ compiler's AddressSanitizer runtime (`cc -print-file-name=libasan.so`),
/// or an error saying how to get it.
fn runtime() -> Result<PathBuf> {
    let out = Command::new("cc")
        .args(["-print-file-name=libasan.so"])
        .output()
        .context("running `cc -print-file-name=libasan.so`")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Without the runtime the compiler echoes the bare name back.
    if !out.status.success() || !path.is_absolute() || !path.exists() {
        bail!(
            "no AddressSanitizer runtime for `cc` (`cc -print-file-name=libasan.so` gave `{}`); \
             install GCC's (`apt-get install libasan8`)",
            path.display()
        );
    }
    Ok(path)
}

/// The value of cargo's runner for the test binaries: `env` with the runtime preloaded and
/// [`ASAN_OPTIONS`].
pub(crate) fn runner(lib: &Path) -> String {
    format!("env LD_PRELOAD={} ASAN_OPTIONS={ASAN_OPTIONS}", lib.display())
}

/// The runner's environment variable for this machine's target (cargo's
/// `CARGO_TARGET_<TRIPLE>_RUNNER`).
fn runner_var() -> Result<String> {
    let triple = match (std::env::consts::ARCH, std::env::consts::OS) {
        ("x86_64", "linux") => "X86_64_UNKNOWN_LINUX_GNU",
        ("aarch64", "linux") => "AARCH64_UNKNOWN_LINUX_GNU",
        (arch, os) => bail!("sanitize: no runner set for {arch}-{os} (Linux on x86-64 or ARM64)"),
    };
    Ok(format!("CARGO_TARGET_{triple}_RUNNER"))
}

/// The options: every library crate's tests (`--all`) or the shim crates' only, and the
/// arguments after `--`, for the test binaries.
#[derive(Debug, PartialEq)]
struct Opts {
    all: bool,
    test_args: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut all = false;
    let mut it = args.iter();
    for a in it.by_ref() {
        match a.as_str() {
            "--all" => all = true,
            "--" => break,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    Ok(Opts { all, test_args: it.cloned().collect() })
}

/// `cargo xtask sanitize`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let lib = runtime()?;
    let t = libtorch::ensure()?;
    tasks::default_data_dir();
    let mut c = tasks::cargo(&t);
    c.args(["test", "--release"]);
    if o.all {
        c.args(["--workspace", "--no-fail-fast", "--exclude", "selfsup"]);
        for krate in ["selfsup-alloc", "selfsup-data", "xtask"] {
            c.args(["--exclude", krate]);
        }
    } else {
        c.args(["--lib", "--tests"]);
        for krate in CRATES {
            c.args(["-p", krate]);
        }
    }
    c.arg("--").args(&o.test_args);
    c.env("SELFSUP_SHIM_SANITIZE", "address")
        .env("CARGO_TARGET_DIR", root.join("target").join("asan"))
        .env(runner_var()?, runner(&lib));
    eprintln!("xtask sanitize: the shims under AddressSanitizer, tests run with {}", runner(&lib));
    tasks::run(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_preloads_the_runtime_and_stops_on_a_report() {
        let r = runner(Path::new("/usr/lib/gcc/x86_64-linux-gnu/12/libasan.so"));
        assert_eq!(
            r,
            "env LD_PRELOAD=/usr/lib/gcc/x86_64-linux-gnu/12/libasan.so \
             ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1"
        );
        assert!(runner_var().unwrap().ends_with("_RUNNER"));
    }

    #[test]
    fn options_and_test_arguments() {
        use crate::args as s;
        let o = parse(&s(&[])).unwrap();
        assert_eq!(o, Opts { all: false, test_args: vec![] });
        let o = parse(&s(&["--all", "--", "pool", "--nocapture"])).unwrap();
        assert_eq!(o, Opts { all: true, test_args: s(&["pool", "--nocapture"]) });
        let e = parse(&s(&["--release"])).unwrap_err().to_string();
        assert!(e.starts_with("unknown option --release"), "{e}");
    }
}
