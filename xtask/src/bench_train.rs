//! `cargo xtask bench train [--methods rotnet,simclr,...] [--backbone cpu|large] [--seconds 5 |
//! --steps N] [--threads 2] [--repeats 3]`: steady-state training throughput of the release
//! `selfsup` binary against the same steps in PyTorch (`bench/train_step.py`), on the same machine
//! and threads, for every registered method (the default), in every configuration the CPU offers:
//! fp32, channels-last, and channels-last with bf16 autocast where the CPU has AMX or AVX512-BF16
//! (elsewhere bf16 is skipped, and said so).
//!
//! The step of each method is its `cpu` reproduction's pretraining (the first training of
//! `selfsup reproduce <method> --profile cpu --configs-only`; for the supervised baseline, the
//! baseline training of colorization's cpu reproduction): its encoder, batch, optimizer and
//! method config, on generated 32-pixel images (`synthetic:N:32`), with oneDNN on
//! (`train.deterministic = false`). Both sides run the same config file: `selfsup train
//! --config` and `bench/train_step.py --config`, whose `bench/reference/<method>.py` is the
//! method's step written in PyTorch. `--backbone large` swaps in the issue's networks at batch
//! 128 (RotNet and SimCLR only): RotNet's NIN of width 192, SimCLR's ResNet-18 with the CIFAR
//! stem.
//!
//! Both sides time their steps inside the process, after the same `WARMUP` untimed steps:
//! PyTorch's loop in `bench/train_step.py`, selfsup by the `elapsed_s` of its per-step
//! `metrics.jsonl` lines (so start-up, kernel selection and the final checkpoint are left out).
//! How many steps are timed: with `--seconds S` (the default, 5), as many as make a timed run
//! of about `S` seconds, at least `MIN_STEPS`, counted for each method and mode from one
//! calibration run of selfsup's step before its measured runs ([`steps_for`]); with `--steps N`,
//! `N` everywhere. A fixed count times the fast AlexNet steps (0.06 s) for under a second, where
//! a slow spell of the shared machine or one slow step decided ratios near 1 (relative patch
//! read 0.93× over 10 steps and 1.14× over 60 on one machine, one after the other), and the
//! slow ones (8 s at the large networks) for minutes.
//! selfsup's loader builds the views (RotNet's crop and flip, SimCLR's full augmentation) in
//! threads beside the compute threads, as in training; PyTorch's step draws its batch once and
//! runs no data pipeline, so the comparison leans towards PyTorch. PyTorch runs each
//! configuration with its default optimizer, with `fused=True`, and with `fused=True` on
//! jemalloc preloaded with the options the `selfsup` binary gives its own (where Debian's
//! `libjemalloc2` is installed); with `--compiled`, also that last variant with the step's loss
//! compiled by `torch.compile` (inductor; a minute or two of compilation a run, in the untimed
//! warm-up, hence opt-in); where inductor fails to compile a step, the compiled variant is left
//! out of that mode with the failure's line in the record (and its log kept beside the
//! temporary folder), and the method is still measured. Every run is repeated `--repeats`
//! times, interleaved (selfsup, then each PyTorch variant, then again), so that the machine's slow
//! spells fall on every side alike, and each side's figure is the median of its runs: on a shared
//! 2-core machine single runs of the same step differed by up to 40%, and the earlier rule (the
//! fastest run of each, PyTorch's best of 6 against selfsup's best of 2) favoured the side with
//! more runs. PyTorch's best is the variant and mode with the highest median. The peak resident set
//! of each process is read from `/proc/<pid>/status` (`VmHWM`) every 100 ms.
//!
//! Prints a table per method and writes it to `results/bench/train.json` as soon as it is
//! measured, under the CPU's name (`[cpu][backbone][method]`: a pass on another kind of machine
//! adds its own entries; a method measured again on the same kind replaces its entry, the others
//! kept), with the command; then renders the record's tables into `results/bench/README.md`
//! ([`crate::bench_report`]).
use crate::bench_memory::{cpu_name, watch};
use crate::libtorch::Torch;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub(crate) const USAGE: &str = "usage: cargo xtask bench train [--methods rotnet,simclr,...] \
                     [--backbone cpu|large] [--seconds 5 | --steps N] [--threads 2] [--repeats 3] \
                     [--compiled]";

/// The registered methods, each with a PyTorch reference step in
/// `bench/reference/<method>.py`.
pub(crate) const METHODS: [&str; 12] = [
    "rotnet",
    "simclr",
    "moco",
    "instance-discrimination",
    "cpc",
    "jigsaw",
    "relative-patch",
    "autoencoder",
    "context-encoder",
    "colorization",
    "split-brain",
    "supervised",
];

/// The `--backbone` choices, as keyed in `results/bench/train.json`.
const BACKBONES: [&str; 2] = ["cpu", "large"];

/// The methods with a `--backbone large` network.
pub(crate) const LARGE: [&str; 2] = ["rotnet", "simclr"];

/// How many steps a run times.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Steps {
    /// This many, for every method and mode (`--steps N`).
    Fixed(usize),
    /// As many as last about this many seconds (`--seconds S`), at least `MIN_STEPS`.
    Seconds(f64),
}

/// The fewest steps `--seconds` times (a slow step is timed at least this often).
const MIN_STEPS: usize = 3;

/// The most steps `--seconds` times (so that a mismeasured calibration cannot ask for hours).
const MAX_STEPS: usize = 1000;

/// Untimed steps of `--seconds`' calibration run, after its `WARMUP` steps.
const CALIBRATION_STEPS: usize = 2;

/// The steps to time for about `seconds` seconds at `step_seconds` a step: the whole number
/// at or above their quotient, within `MIN_STEPS..=MAX_STEPS`.
fn steps_for(seconds: f64, step_seconds: f64) -> usize {
    let n = (seconds / step_seconds).ceil();
    if n.is_finite() {
        (n as usize).clamp(MIN_STEPS, MAX_STEPS)
    } else {
        MAX_STEPS
    }
}

struct Opts {
    methods: Vec<String>,
    large: bool,
    steps: Steps,
    threads: usize,
    repeats: usize,
    /// Also run PyTorch's step compiled with `torch.compile`.
    compiled: bool,
    /// Run by `cargo xtask avx2` ([`held_to_avx2`]): the record says so.
    held: bool,
}

impl Opts {
    /// The command that measures `method` as these options do (recorded with its figures).
    fn command(&self, method: &str, backbone: &str) -> String {
        format!(
            "{}cargo xtask bench train --methods {method} --backbone {backbone} {} --threads {} \
             --repeats {}{}",
            if self.held { "cargo xtask avx2 -- " } else { "" },
            match self.steps {
                Steps::Fixed(n) => format!("--steps {n}"),
                Steps::Seconds(s) => format!("--seconds {s}"),
            },
            self.threads,
            self.repeats,
            if self.compiled { " --compiled" } else { "" }
        )
    }
}

/// `--methods`' value: registered methods with a PyTorch reference step, comma-separated.
pub(crate) fn methods_arg(v: Option<&String>, usage: &str) -> Result<Vec<String>> {
    let v = v.with_context(|| format!("--methods needs a value; {usage}"))?;
    let methods: Vec<String> = v.split(',').map(|m| m.trim().to_string()).collect();
    if let Some(m) = methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
        bail!("--methods: `{m}` has no PyTorch reference step (have {METHODS:?})");
    }
    Ok(methods)
}

/// `--backbone`'s value: whether it is `large` (else `cpu`).
pub(crate) fn backbone_arg(v: Option<&String>) -> Result<bool> {
    match v.map(String::as_str) {
        Some("cpu") => Ok(false),
        Some("large") => Ok(true),
        other => bail!("--backbone {}: expected cpu or large", other.unwrap_or("")),
    }
}

/// The methods asked for, or every method of the backbone where none were; with the large
/// backbone, only methods that have a large network.
pub(crate) fn methods_or_all(methods: Vec<String>, large: bool) -> Result<Vec<String>> {
    if methods.is_empty() {
        let all: &[&str] = if large { &LARGE } else { &METHODS };
        return Ok(all.iter().map(|m| m.to_string()).collect());
    }
    if large {
        if let Some(m) = methods.iter().find(|m| !LARGE.contains(&m.as_str())) {
            bail!("--backbone large: `{m}` has no large network (have {LARGE:?})");
        }
    }
    Ok(methods)
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        methods: Vec::new(),
        large: false,
        steps: Steps::Seconds(5.0),
        threads: 2,
        repeats: 3,
        compiled: false,
        held: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--steps" => {
                o.steps = Steps::Fixed(crate::bench_data::number(&mut it, a, USAGE)?);
                if o.steps == Steps::Fixed(0) {
                    bail!("--steps must be at least 1");
                }
            }
            "--seconds" => {
                let v = it.next().with_context(|| format!("--seconds needs a value; {USAGE}"))?;
                match v.parse::<f64>() {
                    Ok(s) if s.is_finite() && s > 0.0 => o.steps = Steps::Seconds(s),
                    _ => bail!("--seconds {v}: expected a positive number of seconds"),
                }
            }
            "--threads" => o.threads = crate::bench_data::number(&mut it, a, USAGE)?,
            "--repeats" => o.repeats = crate::bench_data::number(&mut it, a, USAGE)?,
            "--compiled" => o.compiled = true,
            "--methods" => o.methods = methods_arg(it.next(), USAGE)?,
            "--backbone" => o.large = backbone_arg(it.next())?,
            other => bail!("unknown option `{other}`; {USAGE}"),
        }
    }
    o.methods = methods_or_all(std::mem::take(&mut o.methods), o.large)?;
    if o.threads == 0 || o.repeats == 0 {
        bail!("--threads and --repeats must be at least 1");
    }
    Ok(o)
}

/// One configuration of the step: memory format and autocast.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mode {
    pub(crate) name: &'static str,
    channels_last: bool,
    bf16: bool,
}

pub(crate) const MODES: [Mode; 3] = [
    Mode { name: "fp32", channels_last: false, bf16: false },
    Mode { name: "channels-last", channels_last: true, bf16: false },
    Mode { name: "channels-last + bf16", channels_last: true, bf16: true },
];

/// The bf16 arithmetic of a CPU (the same family and model comes with and without AMX exposed,
/// and bf16 runs at different rates on the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bf16 {
    Amx,
    Avx512NoAmx,
}

impl Bf16 {
    /// The record's words for it.
    fn label(self) -> &'static str {
        match self {
            Bf16::Amx => "AMX",
            Bf16::Avx512NoAmx => "AVX512-BF16, no AMX",
        }
    }
}

/// The bf16 arithmetic `/proc/cpuinfo`'s flags name: AMX with `amx_bf16`, AVX512-BF16 without
/// AMX with `avx512_bf16` alone, `None` with neither (the rule of
/// `selfsup_core::precision::cpu_supports_bf16`, which refuses bf16 there).
fn cpu_bf16(cpuinfo: &str) -> Option<Bf16> {
    let has = |flag: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(|l| l.split_whitespace())
            .any(|f| f == flag)
    };
    if has("amx_bf16") {
        Some(Bf16::Amx)
    } else if has("avx512_bf16") {
        Some(Bf16::Avx512NoAmx)
    } else {
        None
    }
}

/// The record's name for the CPU: its model name, family and model, and ", no AMX" where it has
/// AVX512-BF16 without AMX, since one family and model comes both ways and bf16 runs at
/// different rates on the two (a kind of machine of its own in `results/bench/train.json`).
/// Under `cargo xtask avx2` (`held`), ", held to AVX2" instead: a kind of its own, whatever
/// the CPU's bf16.
fn record_cpu(name: &str, bf16: Option<Bf16>, held: bool) -> String {
    match bf16 {
        _ if held => format!("{name}, held to AVX2"),
        Some(Bf16::Avx512NoAmx) => format!("{name}, no AMX"),
        _ => name.to_string(),
    }
}

/// Whether this run is `cargo xtask avx2`'s: its marker and every switch of
/// [`crate::avx2::CAPS`] set in `env`. Its `selfsup` binary is then [`crate::avx2::BINARY`]'s.
fn held_to_avx2(env: impl Fn(&str) -> Option<String>) -> bool {
    env(crate::avx2::MARKER).as_deref() == Some("1")
        && crate::avx2::CAPS.iter().all(|(k, v)| env(k).as_deref() == Some(*v))
}

/// The reproduction whose cpu plan holds `method`'s benchmarked training: its own, except for
/// the supervised baseline, which has none and is taken from colorization's (AlexNet, batch
/// 128, as most of the classic methods' baselines).
fn plan_source(method: &str) -> &str {
    if method == "supervised" {
        "colorization"
    } else {
        method
    }
}

/// The first training of `method` in the plan of `plan_source(method)`'s cpu reproduction
/// (`selfsup reproduce <m> --profile cpu --configs-only`, written in `tmp`).
pub(crate) fn cpu_profile_config(bin: &Path, t: &Torch, method: &str, tmp: &Path) -> Result<Value> {
    let source = plan_source(method);
    let mut c = Command::new(bin);
    t.apply(&mut c);
    c.args(["reproduce", source, "--profile", "cpu", "--configs-only", "--runs-dir"])
        .arg(tmp.join("runs"))
        .arg("--results-dir")
        .arg(tmp.join("results"))
        .env("RUST_LOG", "warn");
    let out = c.output().context("running selfsup reproduce --configs-only")?;
    if !out.status.success() {
        bail!(
            "selfsup reproduce {source} --configs-only: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = tmp.join("results").join(source).join("cpu").join("plan.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let plan: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    training_config(&plan, method).with_context(|| format!("{}", path.display()))
}

/// The config of the first training of `method` in a reproduction plan.
fn training_config(plan: &Value, method: &str) -> Result<Value> {
    plan["trainings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| &t["config"])
        .find(|c| c["method"] == method)
        .filter(|c| c.is_object())
        .cloned()
        .with_context(|| format!("no training of `{method}` in the plan"))
}

/// The benchmarked config: `base` with `--backbone large`'s network when asked, oneDNN on,
/// the thread count, and the mode's memory format and precision.
pub(crate) fn step_config(
    base: &Value,
    method: &str,
    large: bool,
    threads: usize,
    mode: Mode,
) -> Value {
    let mut c = base.clone();
    if large {
        c["encoder"] = match method {
            "rotnet" => json!({"kind": "nin", "blocks": 4, "width": 192}),
            _ => json!({"kind": "resnet18", "stem": "cifar"}),
        };
        c["train"]["batch_size"] = json!(128);
    }
    c["device"] = json!("cpu");
    c["train"]["deterministic"] = json!(false);
    c["train"]["threads"] = json!(threads);
    c["train"]["channels_last"] = json!(mode.channels_last);
    c["train"]["precision"] = json!(if mode.bf16 { "bf16" } else { "fp32" });
    c
}

/// `bench/train_step.py`'s arguments for the step of `cfg`, written to `path` (the same
/// config `selfsup train` runs, less `max_steps`).
pub(crate) fn python_args(cfg: &Value, steps: usize, path: &Path) -> Result<Vec<String>> {
    std::fs::write(path, serde_json::to_string_pretty(cfg)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(vec![
        "bench/train_step.py".to_string(),
        format!("--config={}", path.display()),
        format!("--steps={steps}"),
        format!("--warmup={WARMUP}"),
    ])
}

/// One mode's measurements: selfsup's, and PyTorch's in each variant, each the median of its
/// runs (kept in `*_runs`), or why the variant failed (`torch.compile`'s only: see [`interleave`]).
struct Row {
    mode: Mode,
    cfg: Value,
    /// Timed steps a run.
    steps: usize,
    ours: Measured,
    ours_runs: Vec<Measured>,
    theirs: Vec<(&'static str, Result<Measured, String>)>,
    theirs_runs: Vec<Vec<Measured>>,
}

impl Row {
    /// PyTorch's variants that ran, with their medians.
    fn ran(&self) -> impl Iterator<Item = (&'static str, &Measured)> + '_ {
        self.theirs.iter().filter_map(|(name, m)| Some((*name, m.as_ref().ok()?)))
    }

    /// PyTorch's fastest variant in this mode (median images per second).
    fn best_theirs(&self) -> f64 {
        self.ran().map(|(_, m)| m.images_per_s).fold(0.0, f64::max)
    }
}

/// One measured process: images per second and peak resident MiB.
#[derive(Debug, Clone, Copy)]
struct Measured {
    images_per_s: f64,
    seconds_per_step: f64,
    peak_mib: f64,
}

/// The images of the benchmark's generated data set for `steps` timed steps: one epoch covers
/// the run (`WARMUP` + `steps` steps) with a batch to spare. Both selfsup and the PyTorch
/// reference see this count (as `data.max_images`; instance discrimination's memory bank has a
/// row per image).
pub(crate) fn bench_images(cfg: &Value, steps: usize) -> Result<u64> {
    let batch = cfg["train"]["batch_size"].as_u64().context("train.batch_size")?;
    Ok(batch * ((WARMUP + steps) as u64 + 1))
}

/// Untimed steps at the start of every run, on both sides (`bench/train_step.py --warmup`): the
/// first steps pick kernels and fill the allocator's caches.
pub(crate) const WARMUP: usize = 2;

/// One run of `selfsup train` on `cfg` for `WARMUP + steps` steps, logging every step: its
/// steady-state step is the wall time between the step lines of steps `WARMUP` and
/// `WARMUP + steps` (their `elapsed_s`), timed inside the process as PyTorch's step is, so
/// start-up, the first steps and the final checkpoint are left out. The loader builds the views
/// in threads beside the compute threads, as in training.
fn selfsup_step(bin: &Path, t: &Torch, cfg: &Value, steps: usize, dir: &Path) -> Result<Measured> {
    let run = dir.join("run");
    let _ = std::fs::remove_dir_all(&run);
    let mut cfg = cfg.clone();
    cfg["train"]["max_steps"] = json!(WARMUP + steps);
    cfg["train"]["log_every"] = json!(1);
    let images = cfg["data"]["max_images"].as_u64().context("data.max_images")?;
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)?;
    let c = train_command(bin, t, &cfg_path, images, &run);
    let w = watch(c, &dir.join("selfsup.log"), Stdio::null())?;
    let log_path = run.join("metrics.jsonl");
    let log = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    let step = step_seconds(&log, WARMUP as u64, steps as u64)
        .with_context(|| format!("{}", log_path.display()))?;
    let _ = std::fs::remove_dir_all(&run);
    let batch = cfg["train"]["batch_size"].as_f64().context("train.batch_size")?;
    Ok(Measured {
        images_per_s: batch / step,
        seconds_per_step: step,
        peak_mib: w.peak_kb as f64 / 1024.0,
    })
}

/// `selfsup train` of the config at `cfg_path` on `images` generated 32-pixel images (the
/// benchmarks' data), into the run folder `run`, logging warnings only.
pub(crate) fn train_command(
    bin: &Path,
    t: &Torch,
    cfg_path: &Path,
    images: u64,
    run: &Path,
) -> Command {
    let mut c = Command::new(bin);
    t.apply(&mut c);
    c.args(["train", "--no-progress", "--config"])
        .arg(cfg_path)
        .args(["--data", &format!("synthetic:{images}:32")])
        .arg("--out")
        .arg(run)
        .env("RUST_LOG", "warn");
    c
}

/// The mean seconds of steps `from + 1 ..= from + steps` in a `metrics.jsonl` text: the
/// difference of the `elapsed_s` of the step lines of steps `from` and `from + steps`.
fn step_seconds(log: &str, from: u64, steps: u64) -> Result<f64> {
    let elapsed = |step: u64| -> Result<f64> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["kind"] == "step" && v["step"].as_u64() == Some(step))
            .and_then(|v| v["elapsed_s"].as_f64())
            .with_context(|| format!("no step line with elapsed_s for step {step}"))
    };
    let secs = (elapsed(from + steps)? - elapsed(from)?) / steps as f64;
    if !secs.is_finite() || secs <= 0.0 {
        bail!("steps {from}..{}: a step time of {secs} s", from + steps);
    }
    Ok(secs)
}

/// One way of running PyTorch's step: its optimizer, and the C allocator it runs on.
#[derive(Debug, Clone)]
struct Variant {
    name: &'static str,
    fused: bool,
    /// A jemalloc library to preload, with the options selfsup gives its own jemalloc.
    jemalloc: Option<PathBuf>,
    /// The step's loss compiled with `torch.compile` (`bench/train_step.py --compile`).
    compiled: bool,
}

/// Where Debian's `libjemalloc2` puts the library (`apt-get install libjemalloc2`).
pub(crate) const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// PyTorch's variants: as a new user runs it, with `fused=True`, and with `fused=True` on
/// jemalloc (preloaded, as Intel's CPU tuning guide advises) where `jemalloc` exists; with
/// `compiled`, also the last of those with the loss compiled by `torch.compile` (a minute or
/// two of compilation a run, in the untimed warm-up).
fn variants(jemalloc: &Path, compiled: bool) -> Vec<Variant> {
    let mut v = vec![
        Variant { name: "default", fused: false, jemalloc: None, compiled: false },
        Variant { name: "fused", fused: true, jemalloc: None, compiled: false },
    ];
    if jemalloc.exists() {
        v.push(Variant {
            name: "fused + jemalloc",
            fused: true,
            jemalloc: Some(jemalloc.to_path_buf()),
            compiled: false,
        });
    }
    if compiled {
        let last = v.last().expect("two variants at least").clone();
        let name = if last.jemalloc.is_some() { "compiled + jemalloc" } else { "compiled" };
        v.push(Variant { name, compiled: true, ..last });
    }
    v
}

/// PyTorch's step through `bench/train_step.py` with `args` (the mode is in the config) and
/// the variant.
fn python_step(t: &Torch, args: &[String], variant: &Variant, dir: &Path) -> Result<Measured> {
    let mut c = Command::new(&t.python);
    c.args(args);
    if let Some(lib) = &variant.jemalloc {
        c.env("LD_PRELOAD", lib).env("MALLOC_CONF", "dirty_decay_ms:-1,muzzy_decay_ms:-1");
    }
    if variant.fused {
        c.arg("--fused");
    }
    if variant.compiled {
        c.arg("--compile");
    }
    let out_path = dir.join("python.out");
    let out = std::fs::File::create(&out_path)?;
    let w = watch(c, &dir.join("python.log"), Stdio::from(out))?;
    let text = std::fs::read_to_string(&out_path)?;
    let v: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("bench/train_step.py printed `{}`", text.trim()))?;
    Ok(Measured {
        images_per_s: v["images_per_s"].as_f64().context("images_per_s missing")?,
        seconds_per_step: v["seconds_per_step"].as_f64().context("seconds_per_step missing")?,
        peak_mib: w.peak_kb as f64 / 1024.0,
    })
}

/// A PyTorch variant's runs in one mode, or why it failed.
type Runs = Result<Vec<Measured>, String>;

/// The runs of one mode, `repeats` rounds interleaved: each round runs selfsup (`ours`), then
/// every PyTorch variant (`theirs`), so that a slow spell of the machine falls on all of them
/// alike; every side gets as many runs, and the median of each is compared. Returns selfsup's
/// runs and each variant's runs, or its failure.
///
/// `torch.compile` fails on some steps that eager PyTorch runs (an inductor pass: MoCo's
/// shuffle once did): a compiled variant that fails is run no more in this mode, its failure
/// is what `left_out` makes of the error, and PyTorch's best is then its best eager variant.
/// Any other failure (selfsup's, an eager reference's bug) stops the bench.
fn interleave(
    repeats: usize,
    variants: &[Variant],
    mut ours: impl FnMut() -> Result<Measured>,
    mut theirs: impl FnMut(&Variant) -> Result<Measured>,
    mut left_out: impl FnMut(&Variant, &anyhow::Error) -> String,
) -> Result<(Vec<Measured>, Vec<Runs>)> {
    let mut ours_runs = Vec::new();
    let mut theirs_runs: Vec<Runs> = vec![Ok(Vec::new()); variants.len()];
    for _ in 0..repeats {
        ours_runs.push(ours()?);
        for (v, runs) in variants.iter().zip(&mut theirs_runs) {
            let Ok(kept) = runs else { continue };
            match theirs(v) {
                Ok(m) => kept.push(m),
                Err(e) if v.compiled => *runs = Err(left_out(v, &e)),
                Err(e) => return Err(e),
            }
        }
    }
    Ok((ours_runs, theirs_runs))
}

/// What a failed compiled run records: `e`'s message with the run's log (`python.log` in `tmp`,
/// which the next run overwrites) copied beside `tmp` as
/// `selfsup-bench-train-<method>-<mode>-compiled.log` and named instead.
fn compile_failure(e: &anyhow::Error, tmp: &Path, method: &str, mode: Mode) -> String {
    let log = tmp.join("python.log");
    let slug: String = mode.name.replace(" + ", "-");
    let kept = tmp.with_file_name(format!("selfsup-bench-train-{method}-{slug}-compiled.log"));
    let why = format!("{e:#}");
    match std::fs::copy(&log, &kept) {
        Ok(_) => why.replace(&log.display().to_string(), &kept.display().to_string()),
        Err(_) => why,
    }
}

/// The median of repeated runs (images per second and seconds per step each; the mean of the
/// middle two for an even count), with the largest peak memory seen.
fn median(runs: &[Measured]) -> Measured {
    let mid = |f: fn(&Measured) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    Measured {
        images_per_s: mid(|m| m.images_per_s),
        seconds_per_step: mid(|m| m.seconds_per_step),
        peak_mib: runs.iter().map(|m| m.peak_mib).fold(0.0, f64::max),
    }
}

/// The issue's target ratio against PyTorch's best configuration.
fn target(method: &str) -> f64 {
    if matches!(method, "rotnet" | "simclr") {
        1.2
    } else {
        1.0
    }
}

fn measured_json(m: &Measured) -> Value {
    json!({
        "images_per_s": round(m.images_per_s, 2),
        "seconds_per_step": round(m.seconds_per_step, 4),
        "peak_rss_mib": round(m.peak_mib, 0),
    })
}

/// `j` (a median) with the images per second of each run behind it.
fn with_runs(mut j: Value, runs: &[Measured]) -> Value {
    j["runs_images_per_s"] = runs.iter().map(|m| round(m.images_per_s, 2)).collect();
    j
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Runs the benchmark, prints the tables and writes `results/bench/train.json`.
pub fn run(t: &Torch, args: &[String]) -> Result<()> {
    let mut o = parse(args)?;
    o.held = held_to_avx2(|k| std::env::var(k).ok());
    let bin = if o.held {
        let b = std::env::var_os(crate::avx2::BINARY);
        PathBuf::from(b.with_context(|| {
            format!("{} unset: held to AVX2 without its build", crate::avx2::BINARY)
        })?)
    } else {
        crate::tasks::build_release()?
    };
    // The code measured: the checkout as the binary was built, the same for every method.
    let measured = crate::tasks::measured(Path::new("."));
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_isa = cpu_bf16(&info);
    let cpu = record_cpu(&cpu_name(), cpu_isa, o.held);
    // Held to AVX2, bf16 is skipped as on a CPU without AVX512-BF16 or AMX.
    let bf16_isa = cpu_isa.filter(|_| !o.held);
    let bf16 = bf16_isa.is_some();
    let modes: Vec<Mode> = MODES.iter().copied().filter(|m| bf16 || !m.bf16).collect();
    let tmp = std::env::temp_dir().join(format!("selfsup-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let backbone = if o.large { "large" } else { "cpu" };
    let pytorch = variants(Path::new(JEMALLOC), o.compiled);
    let mut summary = Vec::new();
    for method in &o.methods {
        let base = cpu_profile_config(&bin, t, method, &tmp)?;
        let mut rows = Vec::new();
        for &mode in &modes {
            let mut cfg = step_config(&base, method, o.large, o.threads, mode);
            let steps = match o.steps {
                Steps::Fixed(n) => n,
                Steps::Seconds(seconds) => {
                    cfg["data"]["max_images"] = json!(bench_images(&cfg, CALIBRATION_STEPS)?);
                    let probe = selfsup_step(&bin, t, &cfg, CALIBRATION_STEPS, &tmp)?;
                    let n = steps_for(seconds, probe.seconds_per_step);
                    eprintln!(
                        "bench train: {method}, {}: {:.3} s a step (calibration run): timing {n} \
                         steps a run",
                        mode.name, probe.seconds_per_step
                    );
                    n
                }
            };
            cfg["data"]["max_images"] = json!(bench_images(&cfg, steps)?);
            let py = python_args(&cfg, steps, &tmp.join("python-config.json"))?;
            let (ours_runs, results) = interleave(
                o.repeats,
                &pytorch,
                || selfsup_step(&bin, t, &cfg, steps, &tmp),
                |v| python_step(t, &py, v, &tmp),
                |v, e| {
                    let why = compile_failure(e, &tmp, method, mode);
                    eprintln!(
                        "bench train: {method}, {}: PyTorch {} left out: {why}",
                        mode.name, v.name
                    );
                    why
                },
            )?;
            let ours = median(&ours_runs);
            let theirs = pytorch
                .iter()
                .zip(&results)
                .map(|(v, r)| (v.name, r.as_deref().map(median).map_err(String::clone)))
                .collect();
            let theirs_runs = results.into_iter().map(Result::unwrap_or_default).collect();
            rows.push(Row { mode, cfg, steps, ours, ours_runs, theirs, theirs_runs });
        }
        let ours_best = rows
            .iter()
            .max_by(|a, b| a.ours.images_per_s.total_cmp(&b.ours.images_per_s))
            .context("no mode measured")?;
        let (torch_row, (torch_variant, torch_b)) = rows
            .iter()
            .flat_map(|r| r.ran().map(move |v| (r, v)))
            .max_by(|a, b| a.1 .1.images_per_s.total_cmp(&b.1 .1.images_per_s))
            .context("no mode measured")?;
        let ratio = ours_best.ours.images_per_s / torch_b.images_per_s;
        let enc = &rows[0].cfg["encoder"];
        let batch = &rows[0].cfg["train"]["batch_size"];
        println!("\n{method}: encoder {enc}, batch {batch}, {} threads, {cpu}", o.threads);
        print!("  {:<22} {:>9}", "images/s", "selfsup");
        for v in &pytorch {
            print!(" {:>18}", format!("PyTorch {}", v.name));
        }
        println!(" {:>7}  peak MiB (selfsup / PyTorch)", "ratio");
        for r in &rows {
            print!("  {:<22} {:>9.2}", r.mode.name, r.ours.images_per_s);
            for (_, m) in &r.theirs {
                match m {
                    Ok(m) => print!(" {:>18.2}", m.images_per_s),
                    Err(_) => print!(" {:>18}", "failed"),
                }
            }
            let theirs_peak = r.ran().map(|(_, m)| m.peak_mib).next().unwrap_or(f64::NAN);
            println!(
                " {:>6.2}x  {:.0} / {theirs_peak:.0}",
                r.ours.images_per_s / r.best_theirs(),
                r.ours.peak_mib,
            );
        }
        let goal = target(method);
        println!(
            "  best: selfsup {:.2} ({}) against PyTorch {:.2} ({}, {torch_variant}): {ratio:.2}x \
             (target {goal:.1}x: {})",
            ours_best.ours.images_per_s,
            ours_best.mode.name,
            torch_b.images_per_s,
            torch_row.mode.name,
            if ratio >= goal { "met" } else { "not met" }
        );
        summary.push(format!(
            "  {method:<24} {:>9.2} {:>9.2} {ratio:>6.2}x {goal:>6.1}x  {}",
            ours_best.ours.images_per_s,
            torch_b.images_per_s,
            if ratio >= goal { "met" } else { "not met" }
        ));
        let case = json!({
            "command": o.command(method, backbone),
            "measured": measured,
            "cpu": cpu,
            "threads": o.threads,
            "steps": match o.steps {
                Steps::Fixed(n) => json!(n),
                Steps::Seconds(s) => json!(format!("about {s} s a run")),
            },
            "repeats": o.repeats,
            "bf16": match bf16_isa {
                Some(isa) => format!("measured (the CPU has {})", isa.label()),
                None if o.held => "skipped: held to AVX2 (cargo xtask avx2)".to_string(),
                None => "skipped: the CPU has neither AMX nor AVX512-BF16".to_string(),
            },
            "jemalloc": if Path::new(JEMALLOC).exists() {
                            format!("PyTorch also ran on {JEMALLOC}")
                        } else {
                            format!("{JEMALLOC} missing: PyTorch ran on glibc's malloc only")
                        },
            "data": "selfsup: generated 32-pixel images through the method's loader; \
                     PyTorch: one batch drawn once, no data pipeline",
            "encoder": enc,
            "batch_size": batch,
            "modes": rows.iter().map(|r| json!({
                "mode": r.mode.name,
                "steps": r.steps,
                "selfsup": with_runs(measured_json(&r.ours), &r.ours_runs),
                "pytorch": r.theirs.iter().zip(&r.theirs_runs).map(|((name, m), runs)| {
                    let mut j = match m {
                        Ok(m) => with_runs(measured_json(m), runs),
                        Err(why) => json!({ "failed": why }),
                    };
                    j["variant"] = json!(name);
                    j
                }).collect::<Vec<_>>(),
                "ratio_to_best_pytorch_same_mode": round(r.ours.images_per_s / r.best_theirs(), 3),
            })).collect::<Vec<_>>(),
            "best": {
                "selfsup": ours_best.mode.name,
                "selfsup_images_per_s": round(ours_best.ours.images_per_s, 2),
                "pytorch": format!("{}, {torch_variant}", torch_row.mode.name),
                "pytorch_images_per_s": round(torch_b.images_per_s, 2),
                "ratio": round(ratio, 3), "target": goal, "met": ratio >= goal,
            },
        });
        write_case(Path::new(crate::bench_report::RECORD), &cpu, backbone, method, case)?;
        if crate::bench_report::write(Path::new("."))? {
            eprintln!("bench train: wrote {}", crate::bench_report::PAGE);
        }
    }
    if summary.len() > 1 {
        println!("\nbest against best, images/s ({backbone} backbones, {cpu}):");
        println!(
            "  {:<24} {:>9} {:>9} {:>7} {:>7}",
            "method", "selfsup", "PyTorch", "ratio", "target"
        );
        for line in &summary {
            println!("{line}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Sets `[cpu][backbone][method]` of the JSON object at `path` (created when missing), as soon
/// as the method is measured, keeping the other entries: other methods', and other machines'.
fn write_case(path: &Path, cpu: &str, backbone: &str, method: &str, case: Value) -> Result<()> {
    let mut all: Value = match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        Err(_) => json!({}),
    };
    if !all.is_object() {
        bail!("{}: not a JSON object", path.display());
    }
    for (key, entry) in all.as_object().into_iter().flatten() {
        let backbones =
            entry.as_object().map(|e| e.keys().all(|b| BACKBONES.contains(&b.as_str())));
        if backbones != Some(true) {
            bail!(
                "{}: `{key}` is not a machine's entries ({{backbone: {{method: ...}}}}, backbones \
                 {})",
                path.display(),
                BACKBONES.join(", ")
            );
        }
    }
    let machine = &mut all[cpu];
    if !machine[backbone].is_object() {
        machine[backbone] = json!({});
    }
    machine[backbone][method] = case;
    crate::tasks::write_json(path, &all)?;
    eprintln!("bench train: wrote {} ({cpu}, {backbone}, {method})", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_time_is_read_from_the_step_lines() {
        let log = [
            r#"{"kind":"step","step":1,"elapsed_s":0.9,"loss":2.0}"#,
            r#"{"kind":"step","step":2,"elapsed_s":1.0,"loss":2.0}"#,
            r#"{"kind":"epoch","epoch":0,"step":2,"elapsed_s":9.0}"#,
            r#"{"kind":"step","step":3,"elapsed_s":1.5,"loss":2.0}"#,
            r#"{"kind":"step","step":4,"elapsed_s":2.0,"loss":2.0}"#,
        ]
        .join("\n");
        assert!((step_seconds(&log, 2, 2).unwrap() - 0.5).abs() < 1e-12);
        let err = step_seconds(&log, 2, 3).unwrap_err().to_string();
        assert!(err.contains("step 5"), "{err}");
        let err = step_seconds(&log, 3, 0).unwrap_err().to_string();
        assert!(err.contains("step time"), "{err}");
    }

    #[test]
    fn runs_are_summed_up_by_their_median() {
        let m = |ips: f64, mib: f64| Measured {
            images_per_s: ips,
            seconds_per_step: 64.0 / ips,
            peak_mib: mib,
        };
        let odd = median(&[m(100.0, 5.0), m(300.0, 1.0), m(120.0, 2.0)]);
        assert_eq!((odd.images_per_s, odd.peak_mib), (120.0, 5.0));
        assert_eq!(odd.seconds_per_step, 64.0 / 120.0);
        let even = median(&[m(100.0, 1.0), m(300.0, 1.0), m(120.0, 1.0), m(80.0, 1.0)]);
        assert_eq!(even.images_per_s, 110.0);
    }

    #[test]
    fn the_recorded_command_repeats_every_option() {
        let args = ["--steps", "10", "--compiled"].map(String::from);
        let o = parse(&args).unwrap();
        assert_eq!(
            o.command("rotnet", "cpu"),
            "cargo xtask bench train --methods rotnet --backbone cpu --steps 10 --threads 2 \
             --repeats 3 --compiled"
        );
        assert_eq!(
            parse(&[]).unwrap().command("simclr", "large"),
            "cargo xtask bench train --methods simclr --backbone large --seconds 5 --threads 2 \
             --repeats 3"
        );
        let o = parse(&["--seconds", "2.5"].map(String::from)).unwrap();
        assert!(o.command("cpc", "cpu").contains(" --seconds 2.5 "));
    }

    #[test]
    fn seconds_become_steps_within_bounds() {
        assert_eq!(steps_for(5.0, 0.06), 84);
        assert_eq!(steps_for(5.0, 0.5), 10);
        assert_eq!(steps_for(5.0, 8.0), MIN_STEPS);
        assert_eq!(steps_for(5.0, 1e-9), MAX_STEPS);
        assert_eq!(steps_for(5.0, 0.0), MAX_STEPS);
    }

    #[test]
    fn options_name_what_is_wrong() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.methods.len(), o.large, o.steps, o.threads, o.repeats),
            (12, false, Steps::Seconds(5.0), 2, 3)
        );
        assert!(!o.compiled);
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let o = parse(&args("--methods simclr --backbone large --steps 3")).unwrap();
        assert_eq!(
            (o.methods, o.large, o.steps),
            (vec!["simclr".to_string()], true, Steps::Fixed(3))
        );
        assert_eq!(parse(&args("--backbone large")).unwrap().methods, ["rotnet", "simclr"]);
        assert!(parse(&args("--compiled")).unwrap().compiled);
        let err = parse(&args("--methods jigsaw --backbone large")).err().unwrap().to_string();
        assert!(err.contains("`jigsaw` has no large network"), "{err}");
        let err = parse(&args("--methods dino")).err().unwrap().to_string();
        assert!(err.contains("`dino` has no PyTorch reference"), "{err}");
        let err = parse(&args("--backbone huge")).err().unwrap().to_string();
        assert!(err.contains("--backbone huge"), "{err}");
        assert!(parse(&args("--steps 0")).is_err());
        for bad in ["0", "-1", "nan", "inf", "soon"] {
            let err = parse(&args(&format!("--seconds {bad}"))).err().unwrap().to_string();
            assert!(err.contains(&format!("--seconds {bad}: expected a positive")), "{err}");
        }
        assert_eq!(parse(&args("--seconds 12")).unwrap().steps, Steps::Seconds(12.0));
    }

    #[test]
    fn the_compiled_variant_is_fused_on_jemalloc_where_it_is_and_asked_for() {
        let names = |v: Vec<Variant>| v.iter().map(|v| v.name).collect::<Vec<_>>();
        let none = Path::new("/nonexistent/libjemalloc.so.2");
        assert_eq!(names(variants(none, false)), ["default", "fused"]);
        let v = variants(none, true);
        assert_eq!((v[2].name, v[2].fused, v[2].compiled), ("compiled", true, true));
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let v = variants(&here, true);
        assert_eq!(
            names(v.clone()),
            ["default", "fused", "fused + jemalloc", "compiled + jemalloc"]
        );
        assert_eq!(v[3].jemalloc.as_deref(), Some(here.as_path()));
        assert!(v[3].fused && v[3].compiled && !v[2].compiled);
    }

    #[test]
    fn a_compiled_variant_that_fails_is_left_out_and_an_eager_one_stops_the_bench() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let v = variants(&here, true);
        let m = |x: f64| Measured { images_per_s: x, seconds_per_step: 1.0 / x, peak_mib: 1.0 };
        // The compiled variant fails in the second round: its first run is dropped, it is not
        // run again, and every other side keeps all three of its runs.
        let mut calls = Vec::new();
        let mut round = 0;
        let (ours, theirs) = interleave(
            3,
            &v,
            || {
                round += 1;
                Ok(m(10.0))
            },
            |v| {
                calls.push(v.name);
                if v.compiled && calls.len() > 4 {
                    anyhow::bail!("python failed (exit status: 1), see python.log: RuntimeError: x")
                }
                Ok(m(20.0))
            },
            |v, e| format!("{}: {e}", v.name),
        )
        .unwrap();
        assert_eq!(round, 3);
        assert_eq!(ours.len(), 3);
        let kept = |r: &Runs| r.as_ref().map(Vec::len).ok();
        assert_eq!(theirs.iter().map(kept).collect::<Vec<_>>(), [Some(3), Some(3), Some(3), None]);
        assert_eq!(calls.iter().filter(|&&n| n == "compiled + jemalloc").count(), 2);
        let why = theirs[3].as_ref().err().unwrap();
        assert!(why.starts_with("compiled + jemalloc: python failed"), "{why}");
        // The row's best is the best variant that ran.
        let row = Row {
            mode: MODES[0],
            cfg: json!({}),
            steps: 5,
            ours: m(10.0),
            ours_runs: ours,
            theirs: vec![("fused", Ok(m(20.0))), ("compiled + jemalloc", Err("x".into()))],
            theirs_runs: theirs.into_iter().map(Result::unwrap_or_default).collect(),
        };
        assert_eq!(row.best_theirs(), 20.0);
        assert_eq!(row.ran().map(|(n, _)| n).collect::<Vec<_>>(), ["fused"]);
        // An eager variant's failure is an error of the bench.
        let err = interleave(
            2,
            &v,
            || Ok(m(10.0)),
            |v| if v.name == "fused" { anyhow::bail!("fused broke") } else { Ok(m(20.0)) },
            |_, _| unreachable!("only a compiled failure is left out"),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "fused broke");
    }

    #[test]
    fn bf16_follows_the_cpu_flags() {
        let amx = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n";
        assert_eq!(cpu_bf16(amx).map(Bf16::label), Some("AMX"));
        let no_amx = cpu_bf16("flags\t\t: fpu avx512f avx512_bf16\n");
        assert_eq!(no_amx.map(Bf16::label), Some("AVX512-BF16, no AMX"));
        assert_eq!(cpu_bf16("flags\t\t: fpu avx2 avx512f\nbugs\t: amx_bf16\n"), None);
        let xeon = "Intel(R) Xeon(R) Processor (family 6, model 207)";
        assert_eq!(record_cpu(xeon, cpu_bf16(amx), false), xeon);
        assert_eq!(record_cpu(xeon, no_amx, false), format!("{xeon}, no AMX"));
        assert_eq!(
            record_cpu("AMD EPYC (family 23, model 1)", None, false),
            "AMD EPYC (family 23, model 1)"
        );
        assert_eq!(record_cpu(xeon, no_amx, true), format!("{xeon}, held to AVX2"));
        assert_eq!(record_cpu(xeon, cpu_bf16(amx), true), format!("{xeon}, held to AVX2"));
    }

    #[test]
    fn a_run_held_to_avx2_is_cargo_xtask_avx2s_and_says_so() {
        let all: Vec<(&str, &str)> =
            crate::avx2::CAPS.iter().copied().chain([(crate::avx2::MARKER, "1")]).collect();
        let env = |vars: Vec<(&'static str, &'static str)>| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert!(held_to_avx2(env(all.clone())));
        // The switches alone (set by hand, selfsup's own shims not built for AVX2): not held.
        assert!(!held_to_avx2(env(all[..3].to_vec())));
        let mut other = all.clone();
        other[1].1 = "AVX512_CORE";
        assert!(!held_to_avx2(env(other)));
        let o = Opts { held: true, ..parse(&[]).unwrap() };
        assert!(o.command("cpc", "cpu").starts_with("cargo xtask avx2 -- cargo xtask bench train"));
    }

    #[test]
    fn the_step_config_and_the_python_arguments_describe_the_same_step() {
        let base = json!({
            "encoder": {"kind": "nin", "blocks": 4, "width": 16},
            "train": {"batch_size": 64, "threads": 0, "deterministic": true, "precision": "fp32",
                      "channels_last": false,
                      "optimizer": {"kind": "sgd", "lr": 0.1, "momentum": 0.9,
                                    "nesterov": true, "weight_decay": 0.0005}},
            "method_config": {},
        });
        let cfg = step_config(&base, "rotnet", false, 2, MODES[2]);
        assert_eq!(cfg["train"]["precision"], "bf16");
        assert_eq!(cfg["train"]["channels_last"], true);
        assert_eq!(cfg["train"]["deterministic"], false);
        assert_eq!(cfg["train"]["threads"], 2);
        let dir = std::env::temp_dir().join(format!("bench-train-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("python-config.json");
        let a = python_args(&cfg, 5, &path).unwrap();
        let want =
            [format!("--config={}", path.display()), "--steps=5".into(), "--warmup=2".into()];
        assert_eq!(a[1..], want);
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written, cfg);
        std::fs::remove_dir_all(&dir).unwrap();
        let large = step_config(&base, "simclr", true, 2, MODES[0]);
        assert_eq!(large["encoder"], json!({"kind": "resnet18", "stem": "cifar"}));
        assert_eq!(large["train"]["batch_size"], 128);
    }

    /// Every method `selfsup-methods` registers is benchmarked, each with its PyTorch step.
    #[test]
    fn every_registered_method_has_a_reference_step() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let lib = std::fs::read_to_string(root.join("crates/methods/src/lib.rs")).unwrap();
        let mut registered: Vec<String> = lib
            .lines()
            .filter_map(|l| l.trim().strip_prefix("selfsup_")?.split_once("::register(&mut r)"))
            .map(|(krate, _)| krate.replace('_', "-"))
            .collect();
        registered.sort();
        let mut ours: Vec<String> = METHODS.iter().map(|m| m.to_string()).collect();
        ours.sort();
        assert_eq!(registered, ours);
        for m in METHODS {
            let file = root.join("bench/reference").join(format!("{}.py", m.replace('-', "_")));
            assert!(file.is_file(), "{} is missing", file.display());
        }
    }

    #[test]
    fn the_benchmarked_training_is_the_methods_own() {
        let plan = json!({"trainings": [
            {"config": {"method": "colorization", "train": {}}},
            {"config": {"method": "supervised", "train": {"batch_size": 128}}},
        ]});
        assert_eq!(training_config(&plan, "colorization").unwrap()["method"], "colorization");
        assert_eq!(training_config(&plan, "supervised").unwrap()["train"]["batch_size"], 128);
        let err = training_config(&plan, "rotnet").unwrap_err().to_string();
        assert!(err.contains("no training of `rotnet`"), "{err}");
        assert_eq!(plan_source("supervised"), "colorization");
        assert_eq!(plan_source("moco"), "moco");
    }

    #[test]
    fn entries_are_kept_per_machine_backbone_and_method() {
        let dir = std::env::temp_dir().join(format!("bench-train-entry-{}", std::process::id()));
        let path = dir.join("train.json");
        let (xeon, epyc) = ("Xeon (family 6, model 207)", "EPYC (family 23, model 1)");
        write_case(&path, xeon, "cpu", "rotnet", json!({"r": 1})).unwrap();
        write_case(&path, xeon, "large", "rotnet", json!({"r": 2})).unwrap();
        write_case(&path, xeon, "cpu", "simclr", json!({"r": 3})).unwrap();
        write_case(&path, epyc, "cpu", "rotnet", json!({"r": 5})).unwrap();
        write_case(&path, xeon, "cpu", "rotnet", json!({"r": 4})).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let want = json!({
            xeon: {"cpu": {"rotnet": {"r": 4}, "simclr": {"r": 3}}, "large": {"rotnet": {"r": 2}}},
            epyc: {"cpu": {"rotnet": {"r": 5}}},
        });
        assert_eq!(v, want);
        // A file in the layout before machines (`[backbone][method]`) is refused by name, not
        // mixed into: the `cpu` backbone would read as a machine.
        std::fs::write(&path, r#"{"cpu": {"rotnet": {"r": 1}}}"#).unwrap();
        let err = write_case(&path, xeon, "cpu", "rotnet", json!({})).unwrap_err().to_string();
        assert!(err.contains("train.json: `cpu` is not a machine's entries"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
