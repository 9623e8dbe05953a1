//! `cargo xtask`: the project's task runner (rust-analyzer style). It needs nothing but Rust and
//! Python: every command that builds or runs Rust code first makes sure libtorch (torch 2.11.0
//! from PyPI, the exact version `tch` 0.24 expects) is installed in a cache outside the
//! checkout, then runs cargo with `LIBTORCH`, `LIBTORCH_CXX11_ABI=1` and the library path set.
//!
//! xtask itself never links libtorch: it is the tool that installs it.
mod avx2;
mod bench_data;
mod bench_memory;
mod bench_ops;
mod bench_report;
mod bench_train;
mod fetch;
mod fuzz;
mod gpu_check;
mod gpu_pack;
mod libtorch;
mod new_method;
mod sanitize;
mod tables;
mod tasks;

use anyhow::Result;

const HELP: &str = "\
cargo xtask <command> [args]

Commands:
  reproduce <plan> [--profile smoke|cpu|paper] [--dataset cifar10] [--force]
                     train and evaluate a paper's tables into results/<plan>/<profile>/
                     (`selfsup reproduce --help` lists the plans; `zoo [--methods a,b]`
                     compares every method on one trunk)
  new-method NAME    scaffold crates/NAME (a PretextMethod, its config, register, a test) and
                     register it; `cargo xtask test` passes straight after
  tables             regenerate results/README.md and the README's results block from the
                     committed results/**/results.json, and results/bench/README.md from
                     results/bench/train.json (no training)
  test               the whole suite: cargo fmt --check, clippy -D warnings, all tests
  bench data         data-pipeline throughput against torchvision's DataLoader
  bench train [--methods rotnet,simclr] [--backbone cpu|large] [--seconds 5 | --steps N]
              [--threads 2] [--repeats 3] [--compiled]
                     training-step throughput against PyTorch in fp32, channels-last and
                     channels-last + bf16 (where the CPU has it), `--compiled` adding
                     PyTorch's torch.compile variant; each run times about --seconds of
                     steps (or N steps); writes results/bench/train.json
  bench memory [--threads 2 --loader-images 500000 --skip-epoch]
                     peak resident memory of a RotNet cpu-profile epoch; the loader's memory
                     over a generated dataset 10x CIFAR-10 (must stay flat)
  gpu-check [--binary PATH] [--epochs 3] [--methods rotnet,simclr] [--device cuda]
            [--variants configured,channels-last,fast] [--set KEY=VALUE]... [--no-job]
            [--pytorch-steps 40 | --no-pytorch] [--out FILE]
                     on a GPU machine: a few epochs of the RotNet and SimCLR paper profiles'
                     pretraining as configured (deterministic, TF32 convolutions, NCHW),
                     the same channels-last, and fast (autotuner, bf16, channels-last);
                     strict (TF32 off) and tuned (autotuner, fp32) on request; s/epoch,
                     ms/step, images/s, GPU memory, full-protocol time against the targets,
                     a 1-rank job's overhead, PyTorch's step on the same config; writes
                     results/bench/gpu-check.json (or --out) after every run
  gpu-pack [--out target/gpu-pack] [--no-nccl]
                     build here what a GPU machine without cargo needs for the CUDA checks:
                     selfsup, xtask and the CUDA test binaries, stripped, and run.sh (the
                     CUDA tests, then gpu-check) for that machine
  avx2 [--no-build] -- CMD [ARGS...]
                     on an AVX-512 machine, run CMD as an AVX2 CPU runs selfsup and PyTorch:
                     selfsup's shims and plans built for AVX2 (target/avx2/), libtorch,
                     oneDNN and MKL held to AVX2 (for measuring; not an AVX2 machine)
  fuzz [--seconds 60] [TARGET ...]
                     the cargo-fuzz targets of fuzz/ (dataset readers, images, .npy bins,
                     checkpoints, configs) for N seconds each; writes results/bench/fuzz.json
  sanitize [--all] [-- TEST ARGS]
                     the tests of selfsup-core and selfsup-dist (the crates with C++ shims),
                     or with --all of every library crate, release, with the shims under
                     AddressSanitizer (target/asan/)
  fetch <dataset>    download and verify a dataset listed in datasets/manifest.json
  build              build the release `selfsup` binary (rpath set: runs as is)
  run -- <args>      build, then run `selfsup <args>`
  env                print shell exports for plain `cargo build` / `cargo test`
  setup              only install / locate libtorch and print where it is

`cargo xtask <command> --help` prints a command's options (for `reproduce` and `run`, those of
the `selfsup` binary).

Environment:
  SELFSUP_LIBTORCH   an existing libtorch 2.11.0 (a torch/ folder with include/ and lib/)
  SELFSUP_PYTHON     the Python that has that torch (for reference scripts)
  SELFSUP_CACHE      where the torch install is cached (default ~/.cache/selfsup)
  SELFSUP_DATA       the data folder (default: ../shared/datasets if present, else datasets/)
";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    let Some(cmd) = args.first() else {
        print!("{HELP}");
        return Ok(());
    };
    let rest = &args[1..];
    if let Some(usage) = usage(cmd, rest) {
        println!("{usage}");
        return Ok(());
    }
    match cmd.as_str() {
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        "setup" => {
            let t = libtorch::ensure()?;
            println!("libtorch: {}\npython:   {}", t.libtorch.display(), t.python.display());
            Ok(())
        }
        "env" => tasks::env(),
        "build" => tasks::build_release().map(|_| ()),
        "run" => tasks::run_binary(rest),
        "test" => tasks::test(rest),
        "reproduce" => tasks::reproduce(rest),
        "bench" => tasks::bench(rest),
        "fetch" => tasks::fetch(rest),
        "fuzz" => fuzz::run(&libtorch::ensure()?, rest),
        "sanitize" => sanitize::run(&root, rest),
        "gpu-check" => gpu_check::run(rest),
        "gpu-pack" => gpu_pack::run(rest),
        "avx2" => avx2::run(&root, rest),
        "tables" => tables::run(&root),
        "new-method" => new_method::run(&root, rest),
        other => anyhow::bail!("unknown command `{other}`; `cargo xtask help` lists them"),
    }
}

/// The usage line of `cmd` when `rest` asks for help (`-h` or `--help`), for the commands that
/// parse their own options; printed before anything is installed or built.
fn usage(cmd: &str, rest: &[String]) -> Option<&'static str> {
    if !rest.iter().any(|a| a == "-h" || a == "--help") {
        return None;
    }
    match (cmd, rest.first().map(String::as_str)) {
        ("bench", Some("data")) => Some(bench_data::USAGE),
        ("bench", Some("train")) => Some(bench_train::USAGE),
        ("bench", Some("memory")) => Some(bench_memory::USAGE),
        ("bench", _) => Some("usage: cargo xtask bench data|train|memory [--help]"),
        ("gpu-check", _) => Some(gpu_check::USAGE),
        ("gpu-pack", _) => Some(gpu_pack::USAGE),
        // Options after `--` are CMD's own.
        ("avx2", _)
            if rest.iter().take_while(|a| *a != "--").any(|a| a == "-h" || a == "--help") =>
        {
            Some(avx2::USAGE)
        }
        ("fuzz", _) => Some(fuzz::USAGE),
        // Options after `--` are the tests'.
        ("sanitize", _)
            if rest.iter().take_while(|a| *a != "--").any(|a| a == "-h" || a == "--help") =>
        {
            Some(sanitize::USAGE)
        }
        ("new-method", _) => Some(new_method::USAGE),
        _ => None,
    }
}

/// The workspace root (the folder above xtask/).
fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Owned arguments from string literals, for the commands' parsers in tests.
#[cfg(test)]
fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_anywhere_in_a_commands_options_gives_its_usage() {
        assert_eq!(usage("bench", &args(&["train", "--help"])), Some(bench_train::USAGE));
        assert_eq!(
            usage("bench", &args(&["train", "--steps", "3", "-h"])),
            Some(bench_train::USAGE)
        );
        assert_eq!(usage("bench", &args(&["data", "-h"])), Some(bench_data::USAGE));
        assert_eq!(usage("bench", &args(&["memory", "--help"])), Some(bench_memory::USAGE));
        assert_eq!(usage("gpu-check", &args(&["--epochs", "1", "--help"])), Some(gpu_check::USAGE));
        assert_eq!(usage("gpu-pack", &args(&["-h"])), Some(gpu_pack::USAGE));
        assert_eq!(usage("fuzz", &args(&["-h"])), Some(fuzz::USAGE));
        assert_eq!(usage("sanitize", &args(&["--help"])), Some(sanitize::USAGE));
        assert_eq!(usage("sanitize", &args(&["--", "--help"])), None);
        assert_eq!(usage("new-method", &args(&["--help"])), Some(new_method::USAGE));
        assert_eq!(usage("avx2", &args(&["--help"])), Some(avx2::USAGE));
        assert_eq!(usage("avx2", &args(&["--", "selfsup", "train", "-h"])), None);
        assert!(usage("bench", &args(&["--help"])).unwrap().contains("data|train|memory"));
        // Without a help flag the command runs; `reproduce` and `run` pass `--help` to selfsup.
        assert_eq!(usage("bench", &args(&["train", "--steps", "3"])), None);
        assert_eq!(usage("reproduce", &args(&["--help"])), None);
        assert_eq!(usage("run", &args(&["--", "train", "--help"])), None);
    }
}
