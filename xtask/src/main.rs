//! `cargo xtask`: the project's task runner (rust-analyzer style). It needs nothing but Rust and
//! Python: every command that builds or runs Rust code first makes sure libtorch (torch 2.11.0
//! from PyPI, the exact version `tch` 0.24 expects) is installed in a cache outside the
//! checkout, then runs cargo with `LIBTORCH`, `LIBTORCH_CXX11_ABI=1` and the library path set.
//!
//! xtask itself never links libtorch: it is the tool that installs it.
mod bench_data;
mod bench_memory;
mod bench_train;
mod fetch;
mod fuzz;
mod gpu_check;
mod libtorch;
mod new_method;
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
                     committed results/**/results.json (no training)
  test               the whole suite: cargo fmt --check, clippy -D warnings, all tests
  bench data         data-pipeline throughput against torchvision's DataLoader
  bench train [--methods rotnet,simclr] [--backbone cpu|large] [--steps 5] [--repeats 3]
                     training-step throughput against PyTorch in fp32, channels-last and
                     channels-last + bf16 (where the CPU has it); writes results/bench/train.json
  bench memory [--threads 2 --loader-images 500000 --skip-epoch]
                     peak resident memory of a RotNet cpu-profile epoch; the loader's memory
                     over a generated dataset 10x CIFAR-10 (must stay flat)
  gpu-check [--binary PATH] [--epochs 3] [--methods rotnet,simclr] [--device cuda]
                     on a GPU machine: a few epochs of the RotNet and SimCLR paper profiles'
                     pretraining; s/epoch, images/s, GPU memory, full-protocol time against
                     the targets; writes results/bench/gpu-check.json
  fuzz [--seconds 60] [TARGET ...]
                     the cargo-fuzz targets of fuzz/ (dataset readers, images, .npy bins,
                     checkpoints, configs) for N seconds each; writes results/bench/fuzz.json
  fetch <dataset>    download and verify a dataset listed in datasets/manifest.json
  build              build the release `selfsup` binary (rpath set: runs as is)
  run -- <args>      build, then run `selfsup <args>`
  env                print shell exports for plain `cargo build` / `cargo test`
  setup              only install / locate libtorch and print where it is

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
        "gpu-check" => gpu_check::run(rest),
        "tables" => tables::run(&root),
        "new-method" => new_method::run(&root, rest),
        other => anyhow::bail!("unknown command `{other}`; `cargo xtask help` lists them"),
    }
}

/// The workspace root (the folder above xtask/).
fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}
