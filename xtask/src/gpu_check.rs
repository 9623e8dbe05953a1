//! `cargo xtask gpu-check` (issue 18): the one prepared command for a machine with a GPU. It
//! builds the release `selfsup` binary (or takes one built elsewhere with `--binary`), asks
//! `selfsup reproduce <method> --profile paper --configs-only` for the paper profile's
//! pretraining config of RotNet and SimCLR, trains each for a few epochs on CUDA in two
//! variants, and prints seconds per epoch, milliseconds per step, images per second, the GPU
//! memory the process held (sampled from `nvidia-smi`) and the full protocol's pretraining time
//! extrapolated from the steady epochs, against the targets on one H100/H200 (RotNet's
//! 200-epoch pretraining under 15 minutes; SimCLR ResNet-18 on CIFAR-10 under 5 s an epoch at
//! batch 512). The variants ([`VARIANTS`], `--variants`; `configured`, `channels-last` and
//! `fast` by default): `configured`, the paper config as it is (`train.deterministic = true`:
//! cuDNN's deterministic algorithms with its autotuner off, bit-reproducible on one GPU model;
//! fp32 tensors, TF32 in cuDNN's convolutions as PyTorch's default, `train.tf32`; NCHW),
//! `channels-last` (the same in channels-last: still deterministic), `strict` (`configured` with
//! `train.tf32 = "off"`: fp32 on the FP32 units, what `configured` was until 2026-12-06),
//! `tuned` (fp32 tensors, cuDNN's autotuner on, channels-last) and `fast`
//! (autotuner, bf16 autocast, channels-last); `--set KEY=VALUE` overrides more for all. Every
//! run takes the CUDA path of training: batches prefetched to the device on a side stream
//! (`selfsup_core::stage`), the fused optimizers.
//! Unless `--no-job`, one variant ([`job_variant`]: `fast` when it runs, else the first) also
//! trains as the one rank of a data-parallel job (`selfsup launch --nproc 1`, on NCCL when the
//! binary was built with `--features nccl`; the backend is read from the rank's log), and the
//! distributed wrapper's cost is printed against issue 19's target (under 3%). Unless
//! `--no-pytorch`, PyTorch's step on the same saved config runs beside it
//! (`bench/train_step.py --device cuda --fused`: its batch drawn once, no data loading, the
//! same determinism switches), and its time a step is set against selfsup's step inside
//! training (from the step lines' clock within the steady epochs, so loading overlaps it but
//! the epoch boundaries are left out). Ends with a table; writes
//! `results/bench/gpu-check.json` (or `--out`) after every run, so a call cut short still
//! leaves the runs it finished (`"complete": false` until the last).
//!
//! The data is CIFAR-10 when `$SELFSUP_DATA` (or `--data-dir`) holds it, else generated
//! images of the same number and size (`synthetic:50000:32`): speed does not depend on the
//! pixels, and a device machine may not carry the dataset. On a CPU, `--device cpu --profile
//! smoke` runs the same path in seconds (PyTorch then has no step for SimCLR's tiny encoder,
//! and says so).
//!
//! First run (2026-12-04, one H200, binary built on the CPU machine and carried; before the
//! variants and the PyTorch step were built in, two invocations, the second with the fast
//! overrides as `--set`): see `bench/README.md`, "On a GPU". Second run (same day, same kind):
//! this command as a whole, then the fast variant again once the loader wrote batches pinned
//! (RotNet 11.1 min for 200 epochs, SimCLR 1.96 s an epoch, 1.33× PyTorch's step): "On a GPU:
//! the second run".
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const USAGE: &str = "usage: cargo xtask gpu-check [--binary PATH] [--epochs 3] \
    [--methods rotnet,simclr] [--device cuda] [--profile paper] [--data SPEC] [--data-dir DIR] \
    [--no-job] [--variants configured,channels-last,fast] [--set KEY=VALUE]... [--pytorch-steps 40 | \
    --no-pytorch] [--out FILE]";

#[derive(Debug, PartialEq)]
struct Opts {
    binary: Option<PathBuf>,
    epochs: u64,
    methods: Vec<String>,
    device: String,
    profile: String,
    data: Option<String>,
    data_dir: Option<PathBuf>,
    /// Also train each method, in one variant ([`job_variant`]), as the one rank of a
    /// data-parallel job (`selfsup launch --nproc 1`) and report the distributed wrapper's cost
    /// (issue 19: under 3%).
    job: bool,
    /// Config overrides for every run (`selfsup train --set`), e.g. the fast variant
    /// `train.deterministic=false`, `train.precision=bf16`, `train.channels_last=true`.
    sets: Vec<String>,
    /// The report's path (default `results/bench/gpu-check.json`).
    out: PathBuf,
    /// The [`VARIANTS`] to run, by name (default [`DEFAULT_VARIANTS`]).
    variants: Vec<String>,
    /// Timed steps of PyTorch's step on each config (`bench/train_step.py`); `None`: not run
    /// (`--no-pytorch`).
    pytorch_steps: Option<u64>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        binary: None,
        epochs: 3,
        methods: vec!["rotnet".into(), "simclr".into()],
        device: "cuda".into(),
        profile: "paper".into(),
        data: None,
        data_dir: None,
        job: true,
        sets: Vec::new(),
        out: PathBuf::from("results/bench/gpu-check.json"),
        variants: DEFAULT_VARIANTS.iter().map(|n| n.to_string()).collect(),
        pytorch_steps: Some(40),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--binary" => o.binary = Some(PathBuf::from(value()?)),
            "--epochs" => {
                let v = value()?;
                o.epochs = v.parse().ok().filter(|&n| n >= 1).with_context(|| {
                    format!("--epochs {v}: not a whole number of at least 1\n{USAGE}")
                })?;
            }
            "--methods" => {
                o.methods = value()?.split(',').map(|m| m.trim().to_string()).collect();
                if o.methods.iter().any(String::is_empty) {
                    bail!("--methods: an empty method name\n{USAGE}");
                }
            }
            "--device" => o.device = value()?.clone(),
            "--profile" => o.profile = value()?.clone(),
            "--data" => o.data = Some(value()?.clone()),
            "--data-dir" => o.data_dir = Some(PathBuf::from(value()?)),
            "--no-job" => o.job = false,
            "--set" => {
                let v = value()?;
                if !v.contains('=') {
                    bail!("--set {v}: not KEY=VALUE\n{USAGE}");
                }
                o.sets.push(v.clone());
            }
            "--out" => o.out = PathBuf::from(value()?),
            "--variants" => {
                let v = value()?;
                o.variants = v.split(',').map(|x| x.trim().to_string()).collect();
                if let Some(bad) = o.variants.iter().find(|x| !VARIANTS.iter().any(|(n, _)| n == x))
                {
                    let names: Vec<&str> = VARIANTS.iter().map(|(n, _)| *n).collect();
                    bail!("--variants {v}: no variant `{bad}` ({})\n{USAGE}", names.join(", "));
                }
            }
            "--pytorch-steps" => {
                let v = value()?;
                o.pytorch_steps = Some(v.parse().ok().filter(|&n| n >= 1).with_context(|| {
                    format!("--pytorch-steps {v}: not a whole number of at least 1\n{USAGE}")
                })?);
            }
            "--no-pytorch" => o.pytorch_steps = None,
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    Ok(o)
}

/// One epoch line of a run's `metrics.jsonl`: `(epoch, cumulative steps, seconds)`.
fn epoch_lines(metrics: &str) -> Vec<(u64, u64, f64)> {
    metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "epoch")
        .filter_map(|v| Some((v["epoch"].as_u64()?, v["step"].as_u64()?, v["seconds"].as_f64()?)))
        .collect()
}

/// `(seconds per epoch, steps per epoch)` of the steady epochs: the median over every epoch
/// but the first (start-up, cuDNN's algorithm search, allocator growth), the mean of the middle
/// two for an even count, or the first alone when it is the only one.
fn steady(epochs: &[(u64, u64, f64)]) -> Option<(f64, u64)> {
    let mut per: Vec<(f64, u64)> = Vec::new();
    let mut last_step = 0;
    for &(_, step, s) in epochs {
        per.push((s, step - last_step.min(step)));
        last_step = step;
    }
    let steady = if per.len() > 1 { &per[1..] } else { &per[..] };
    // Full epochs all take the same number of steps.
    Some((median(steady.iter().map(|p| p.0).collect())?, steady[0].1))
}

/// The median of `v`: the mean of the middle two for an even count; `None` when empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n.is_multiple_of(2) => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        _ => Some(v[n / 2]),
    }
}

/// The largest memory (MiB) `nvidia-smi --query-compute-apps=pid,used_memory
/// --format=csv,noheader,nounits` shows for `pid`.
fn gpu_mib_of(csv: &str, pid: u32) -> Option<u64> {
    csv.lines()
        .filter_map(|l| {
            let (p, m) = l.split_once(',')?;
            (p.trim().parse::<u32>().ok()? == pid).then(|| m.trim().parse::<u64>().ok())?
        })
        .max()
}

/// The GPUs' names, from `nvidia-smi`; `None` without it.
fn gpu_name() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().replace('\n', "; "))
}

/// Runs `cmd` to its end, sampling the GPU memory of its process every 500 ms; stderr goes to
/// `log`. Returns the peak MiB seen (`None` without `nvidia-smi` or on the CPU).
fn run_sampled(mut cmd: Command, log: &Path, sample: bool) -> Result<Option<u64>> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = cmd.stdout(Stdio::null()).stderr(err).spawn().context("starting selfsup")?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample.then(|| {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak: Option<u64> = None;
            while !done.load(Ordering::Relaxed) {
                let out = Command::new("nvidia-smi")
                    .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
                    .output();
                let Ok(out) = out else { break };
                if let Some(m) = gpu_mib_of(&String::from_utf8_lossy(&out.stdout), pid) {
                    peak = Some(peak.unwrap_or(0).max(m));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            peak
        })
    });
    let status = child.wait()?;
    done.store(true, Ordering::Relaxed);
    let peak = sampler.and_then(|h| h.join().ok().flatten());
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        bail!("selfsup failed ({status}), see {}: {last}", log.display());
    }
    Ok(peak)
}

/// The collectives' backend a rank logged (`backend=nccl` in its `data-parallel` line), its
/// terminal colours left out.
fn backend_in(log: &str) -> Option<String> {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence `ESC [ ... m`.
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let at = plain.find("backend=")? + "backend=".len();
    let word: String = plain[at..]
        .trim_start_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// The target for `method` on one H100/H200, and whether it is met.
fn target(method: &str, s_per_epoch: f64, full_s: f64, batch: u64) -> Option<(String, bool)> {
    match method {
        "rotnet" => Some(("full pretraining under 15 min".into(), full_s < 15.0 * 60.0)),
        "simclr" if batch == 512 => {
            Some(("under 5 s an epoch at batch 512".into(), s_per_epoch < 5.0))
        }
        _ => None,
    }
}

/// The ways each method trains (`--variants`): `configured`, the paper profile's config as it
/// is (`deterministic`: cuDNN's deterministic algorithms with its autotuner off; fp32 tensors,
/// TF32 in cuDNN's convolutions, not in cuBLAS's matmuls, PyTorch's default; NCHW, as the paper
/// profiles are configured), `channels-last`, the same in channels-last (whether the paper
/// profiles, still deterministic, should train so on CUDA), `strict`, `configured` with TF32 off
/// (every product on the FP32 units: `configured` until 2026-12-06, 46.5 and 54.8 minutes on
/// the H200), `tuned`, fp32 tensors with cuDNN's autotuner and channels-last, no autocast, and
/// `fast`, the GPU path at full speed (cuDNN's autotuner, bf16 autocast, channels-last).
const VARIANTS: [(&str, &[&str]); 5] = [
    ("configured", &[]),
    ("channels-last", &["train.channels_last=true"]),
    ("strict", &["train.tf32=off"]),
    ("tuned", &["train.deterministic=false", "train.channels_last=true"]),
    ("fast", &["train.deterministic=false", "train.precision=bf16", "train.channels_last=true"]),
];

/// The [`VARIANTS`] `gpu-check` runs without `--variants`: the two a deterministic paper
/// profile can train in and the fastest. `strict` was measured twice on the H200 as
/// `configured`, before TF32 had its own setting; `tuned` (non-deterministic fp32) decides no
/// default. An estimate from the second H200 run's times, not yet run so: 334 s for the strict
/// `configured` and `fast` with a 1-rank job each and PyTorch's step; `channels-last` added and
/// one job dropped ([`job_variant`]) about the same, less what TF32 saves the deterministic
/// runs, inside one device call's 10 minutes.
const DEFAULT_VARIANTS: [&str; 3] = ["configured", "channels-last", "fast"];

/// The variant that also trains as a 1-rank job: `fast` when it runs (the shortest steps, where
/// the wrapper's cost a step weighs most), else the first asked for.
fn job_variant(variants: &[String]) -> Option<&str> {
    variants.iter().find(|v| *v == "fast").or(variants.first()).map(String::as_str)
}

/// Seconds a step takes in the steady epochs (every epoch but the first), from the `elapsed_s`
/// of the step lines inside each epoch (so the epoch's start and its checkpoint are left out):
/// the median over those epochs.
fn step_seconds(metrics: &str) -> Option<f64> {
    let mut per_epoch: std::collections::BTreeMap<u64, Vec<(u64, f64)>> = Default::default();
    for v in metrics.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if v["kind"] == "step" {
            if let (Some(e), Some(st), Some(t)) =
                (v["epoch"].as_u64(), v["step"].as_u64(), v["elapsed_s"].as_f64())
            {
                per_epoch.entry(e).or_default().push((st, t));
            }
        }
    }
    let rates: Vec<f64> = per_epoch
        .iter()
        .skip(usize::from(per_epoch.len() > 1))
        .filter_map(|(_, pts)| {
            let (first, last) = (pts.first()?, pts.last()?);
            (last.0 > first.0).then(|| (last.1 - first.1) / (last.0 - first.0) as f64)
        })
        .collect();
    median(rates)
}

/// PyTorch's step for the same config (`bench/train_step.py --device <device> --fused`, its
/// batch drawn once, no data loading): seconds a step, or the failure's last line.
fn pytorch_step(python: &Path, config: &Path, device: &str, steps: u64) -> Result<f64, String> {
    let out = Command::new(python)
        .arg("bench/train_step.py")
        .arg("--config")
        .arg(config)
        .args(["--device", if device.starts_with("cuda") { "cuda" } else { "cpu" }, "--fused"])
        .args(["--steps", &steps.to_string(), "--warmup", "10"])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{'));
    if let Some(s) = line
        .filter(|_| out.status.success())
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v["seconds_per_step"].as_f64())
    {
        return Ok(s);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string())
}

/// Runs the check.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let (bin, torch) = match &o.binary {
        Some(b) => {
            if !b.is_file() {
                bail!("--binary {}: no such file", b.display());
            }
            (b.clone(), crate::libtorch::installed()?)
        }
        None => (crate::tasks::build_release()?, crate::libtorch::ensure()?),
    };
    let data_dir = o
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("SELFSUP_DATA").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared/datasets"));
    let (data, data_why) = match &o.data {
        Some(d) => (d.clone(), "from --data".to_string()),
        None if data_dir.join("cifar-10-batches-bin").is_dir() => {
            ("cifar10".into(), format!("CIFAR-10 in {}", data_dir.display()))
        }
        None => (
            "synthetic:50000:32".into(),
            format!("no CIFAR-10 in {}: generated images of its size", data_dir.display()),
        ),
    };
    let on_gpu = o.device.starts_with("cuda");
    let gpu = if on_gpu { gpu_name() } else { None };
    let device_name = gpu.clone().unwrap_or_else(|| o.device.clone());
    println!("gpu-check: {} on {device_name}; data {data} ({data_why})", bin.display());
    let tmp = PathBuf::from("target").join("gpu-check");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let selfsup = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args).env("RUST_LOG", "info");
        torch.apply(&mut c);
        c
    };
    // The report, written after every run (whole or not at all), so that a device call cut
    // short still brings back the runs it finished.
    let cpu = crate::bench_memory::cpu_name();
    let measured = crate::tasks::measured(Path::new("."));
    let write = |rows: &[Value], complete: bool| {
        let report = json!({
            "measured": measured,
            "device": o.device, "gpu": gpu, "cpu": cpu, "profile": o.profile, "set": o.sets,
            "data": data, "binary": bin.display().to_string(), "complete": complete,
            "runs": rows,
        });
        crate::tasks::write_json(&o.out, &report)
    };
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for m in &o.methods {
        let plans = tmp.join("plans");
        let mut c = selfsup(&["reproduce", m, "--profile", &o.profile, "--configs-only"]);
        c.arg("--results-dir").arg(&plans).arg("--device").arg(&o.device);
        let out = c.output().context("starting selfsup")?;
        if !out.status.success() {
            bail!("selfsup reproduce {m} --configs-only: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The plan's first training of the method itself (RotNet's plan also trains the
        // supervised baseline).
        let configs: Vec<PathBuf> =
            String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect();
        let mut picked = None;
        for p in &configs {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(p)?)
                .with_context(|| format!("{}", p.display()))?;
            if v["method"] == m.as_str() {
                picked = Some((p.clone(), v));
                break;
            }
        }
        let Some((config, v)) = picked else {
            bail!("the {m} plan's profile `{}` trains no `{m}` run", o.profile);
        };
        let full_epochs = v["train"]["epochs"].as_u64().context("config without train.epochs")?;
        let epochs = format!("train.epochs={}", o.epochs);
        for variant in &o.variants {
            let sets: Vec<String> = VARIANTS
                .iter()
                .find(|(n, _)| n == variant)
                .map(|(_, s)| s.iter().map(|kv| kv.to_string()).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(o.sets.iter().cloned())
                .collect();
            // Trains the config for `o.epochs` epochs (`launch`: as the one rank of a
            // data-parallel job, the distributed wrapper's path) and returns (s/epoch, steps,
            // s/step, GPU MiB, wall s).
            type Timed = (f64, u64, Option<f64>, Option<u64>, f64);
            let train = |name: &str, launch: bool| -> Result<Timed> {
                let run_dir = tmp.join("runs").join(name);
                let head: &[&str] =
                    if launch { &["launch", "--nproc", "1", "train"] } else { &["train"] };
                let mut c = selfsup(head);
                c.args(["--no-progress", "--device", &o.device, "--data", &data]);
                c.arg("--config").arg(&config).arg("--out").arg(&run_dir);
                c.arg("--data-dir").arg(&data_dir).args(["--set", &epochs]);
                for kv in &sets {
                    c.args(["--set", kv]);
                }
                let started = Instant::now();
                let log = tmp.join(format!("{name}.log"));
                let gpu_mib = run_sampled(c, &log, on_gpu && gpu.is_some())?;
                let wall = started.elapsed().as_secs_f64();
                let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
                let (s, steps) =
                    steady(&epoch_lines(&metrics)).context("no epoch lines in metrics")?;
                Ok((s, steps, step_seconds(&metrics), gpu_mib, wall))
            };
            let name = format!("{m}-{variant}");
            let (s, steps, step_s, gpu_mib, wall) = train(&name, false)?;
            // The config as run, the variant's and `--set`'s overrides applied (the trainer
            // saves it beside the run).
            let saved = tmp.join("runs").join(&name).join("config.json");
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&saved)?)
                .with_context(|| format!("{}", saved.display()))?;
            let batch = v["train"]["batch_size"].as_u64().context("config without batch_size")?;
            let images_s = (steps * batch) as f64 / s;
            let full_s = s * full_epochs as f64;
            // The targets are the paper protocols'; a smoke or cpu profile has none.
            let t = if o.profile == "paper" { target(m, s, full_s, batch) } else { None };
            println!(
                "{m:<8} {variant:<13} {s:.2} s/epoch ({steps} steps of {batch}; a step {}), \
                 {images_s:.0} images/s, GPU memory {}, {o_epochs} epochs in {wall:.0} s; the \
                 full {full_epochs} epochs: {:.1} min{}",
                step_s.map_or("?".into(), |x| format!("{:.1} ms", 1e3 * x)),
                gpu_mib.map_or("not sampled".into(), |m| format!("{m} MiB")),
                full_s / 60.0,
                t.as_ref().map_or(String::new(), |(what, ok)| format!(
                    " (target: {what}: {})",
                    if *ok { "met" } else { "NOT met" }
                )),
                o_epochs = o.epochs,
            );
            let job = if o.job && job_variant(&o.variants) == Some(variant.as_str()) {
                let job_name = format!("{name}-job");
                let (js, ..) = train(&job_name, true)?;
                let overhead = js / s - 1.0;
                let log = std::fs::read_to_string(tmp.join(format!("{job_name}.log")))
                    .unwrap_or_default();
                let backend = backend_in(&log).unwrap_or_else(|| "not in the log".into());
                println!(
                    "{m:<8} {variant:<13} as a 1-rank data-parallel job (backend {backend}): \
                     {js:.2} s/epoch, {:+.1}% against the plain run (target under 3%)",
                    100.0 * overhead
                );
                Some((js, backend, overhead))
            } else {
                None
            };
            // PyTorch's step on the same config, against selfsup's step inside training.
            let pytorch =
                o.pytorch_steps.map(|n| pytorch_step(&torch.python, &saved, &o.device, n));
            // PyTorch's time a step over selfsup's: above 1, selfsup is ahead.
            let ratio = match &pytorch {
                Some(Ok(p)) => step_s.map(|x| p / x),
                _ => None,
            };
            let pytorch_json = match &pytorch {
                Some(Ok(p)) => {
                    println!(
                        "{m:<8} {variant:<13} PyTorch's step (fused SGD, one batch, no loading): \
                         {:.1} ms, {:.0} images/s; selfsup's step in training {}: {}",
                        1e3 * p,
                        batch as f64 / p,
                        step_s.map_or("?".into(), |x| format!("{:.1} ms", 1e3 * x)),
                        ratio.map_or("?".into(), |r| format!("{r:.2}x PyTorch's speed")),
                    );
                    json!({"seconds_per_step": p, "images_per_s": batch as f64 / p,
                           "ratio": ratio})
                }
                Some(Err(e)) => {
                    println!("{m:<8} {variant:<13} PyTorch's step failed: {e}");
                    json!({"error": e})
                }
                None => Value::Null,
            };
            summary.push(format!(
                "| {m} | {variant} | {s:.2} | {} | {images_s:.0} | {} | {:.1} | {} | {} | {} |",
                step_s.map_or("?".into(), |x| format!("{:.1}", 1e3 * x)),
                gpu_mib.map_or("–".into(), |m| m.to_string()),
                full_s / 60.0,
                t.as_ref().map_or("–", |(_, ok)| if *ok { "met" } else { "NOT met" }),
                job.as_ref().map_or("–".into(), |(_, b, overhead)| format!(
                    "{:+.1}% ({b})",
                    100.0 * overhead
                )),
                match (&pytorch, ratio) {
                    (Some(Ok(_)), Some(r)) => format!("{r:.2}x"),
                    (Some(Ok(_)), None) => "?".into(),
                    (Some(Err(_)), _) => "failed".into(),
                    (None, _) => "–".into(),
                },
            ));
            rows.push(json!({
                "method": m, "variant": variant, "set": sets, "config": v,
                "epochs_run": o.epochs, "wall_s": wall,
                "s_per_epoch": s, "steps_per_epoch": steps, "batch_size": batch,
                "s_per_step": step_s, "images_per_s": images_s, "gpu_memory_mib": gpu_mib,
                "full_epochs": full_epochs, "full_pretraining_min": full_s / 60.0,
                "target": t.as_ref().map(|(w, _)| w.clone()), "target_met": t.map(|(_, ok)| ok),
                "job_s_per_epoch": job.as_ref().map(|j| j.0),
                "job_backend": job.as_ref().map(|j| j.1.clone()),
                "job_overhead": job.as_ref().map(|j| j.2),
                "pytorch_step": pytorch_json,
            }));
            write(&rows, false)?;
        }
    }
    println!(
        "\n| method | variant | s/epoch | ms/step | images/s | GPU MiB | full min | target | \
         1-rank job | vs PyTorch's step |\n|---|---|---:|---:|---:|---:|---:|---|---|---:|"
    );
    for line in &summary {
        println!("{line}");
    }
    write(&rows, true)?;
    println!("wrote {}", o.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args as s;

    #[test]
    fn options() {
        let o = parse(&s(&["--epochs", "2", "--methods", "rotnet", "--device", "cpu"])).unwrap();
        assert_eq!((o.epochs, o.methods, o.device), (2, vec!["rotnet".to_string()], "cpu".into()));
        assert_eq!(parse(&[]).unwrap().methods, ["rotnet", "simclr"]);
        assert!(parse(&[]).unwrap().job && !parse(&s(&["--no-job"])).unwrap().job);
        let e = parse(&s(&["--epochs", "0"])).unwrap_err().to_string();
        assert!(e.contains("--epochs 0"), "{e}");
        assert!(parse(&s(&["--methods", "rotnet,"])).is_err());
        assert!(parse(&s(&["--epoch", "2"])).unwrap_err().to_string().contains("`--epoch`"));
        assert!(parse(&s(&["--binary"])).unwrap_err().to_string().contains("needs a value"));
        let o = parse(&s(&["--set", "train.precision=bf16", "--set", "a=1", "--out", "f.json"]));
        let o = o.unwrap();
        assert_eq!((o.sets.len(), o.out), (2, PathBuf::from("f.json")));
        assert!(parse(&s(&["--set", "bf16"])).unwrap_err().to_string().contains("--set bf16"));
    }

    #[test]
    fn steady_epochs_leave_the_first_out() {
        let m = "{\"kind\":\"step\",\"epoch\":0,\"step\":1}\n\
                 {\"kind\":\"epoch\",\"epoch\":1,\"step\":10,\"seconds\":9.0}\n\
                 {\"kind\":\"epoch\",\"epoch\":2,\"step\":20,\"seconds\":2.0}\n\
                 {\"kind\":\"epoch\",\"epoch\":3,\"step\":30,\"seconds\":3.0}\n\
                 {\"kind\":\"epoch\",\"epoch\":4,\"step\":40,\"seconds\":2.5}\n";
        let e = epoch_lines(m);
        assert_eq!(e.len(), 4);
        assert_eq!(steady(&e), Some((2.5, 10)));
        assert_eq!(steady(&e[..1]), Some((9.0, 10)));
        // Two steady epochs: their mean, not the slower of the two.
        assert_eq!(steady(&e[..3]), Some((2.5, 10)));
        assert_eq!(steady(&[]), None);
    }

    #[test]
    fn variants_and_pytorch_steps() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.variants, o.pytorch_steps),
            (vec!["configured".into(), "channels-last".into(), "fast".into()], Some(40))
        );
        // One variant also trains as a 1-rank job: `fast` when it runs, else the first.
        assert_eq!(job_variant(&parse(&[]).unwrap().variants), Some("fast"));
        assert_eq!(job_variant(&s(&["tuned", "configured"])), Some("tuned"));
        assert_eq!(job_variant(&s(&["configured", "fast"])), Some("fast"));
        assert_eq!(job_variant(&[]), None);
        let o = parse(&s(&["--variants", "fast", "--pytorch-steps", "5"])).unwrap();
        assert_eq!((o.variants, o.pytorch_steps), (vec!["fast".to_string()], Some(5)));
        let o = parse(&s(&["--variants", "strict,configured"])).unwrap();
        assert_eq!(o.variants, ["strict", "configured"]);
        assert_eq!(parse(&s(&["--no-pytorch"])).unwrap().pytorch_steps, None);
        let e = parse(&s(&["--variants", "fast,quick"])).unwrap_err().to_string();
        assert!(e.contains("no variant `quick`"), "{e}");
        assert!(parse(&s(&["--pytorch-steps", "0"])).is_err());
    }

    #[test]
    fn a_step_is_timed_inside_the_steady_epochs() {
        // Epoch 0 (left out): slow start. Epochs 1 and 2: 10 ms and 12 ms a step between their
        // first and last step lines; the gap between epochs (checkpoint, loader) is left out.
        let m = "{\"kind\":\"step\",\"epoch\":0,\"step\":10,\"elapsed_s\":5.0}\n\
                 {\"kind\":\"step\",\"epoch\":0,\"step\":20,\"elapsed_s\":6.0}\n\
                 {\"kind\":\"epoch\",\"epoch\":1,\"step\":20,\"seconds\":6.5}\n\
                 {\"kind\":\"step\",\"epoch\":1,\"step\":30,\"elapsed_s\":7.0}\n\
                 {\"kind\":\"step\",\"epoch\":1,\"step\":40,\"elapsed_s\":7.1}\n\
                 {\"kind\":\"step\",\"epoch\":2,\"step\":50,\"elapsed_s\":8.0}\n\
                 {\"kind\":\"step\",\"epoch\":2,\"step\":60,\"elapsed_s\":8.12}\n";
        let s = step_seconds(m).unwrap();
        assert!((s - 0.011).abs() < 1e-9, "{s}");
        // One line an epoch: no rate.
        assert_eq!(
            step_seconds("{\"kind\":\"step\",\"epoch\":0,\"step\":8,\"elapsed_s\":1.0}"),
            None
        );
    }

    #[test]
    fn the_backend_a_rank_logged() {
        let log =
            "\u{1b}[32m INFO\u{1b}[0m \u{1b}[3mbackend\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"nccl\" data";
        assert_eq!(backend_in(log).as_deref(), Some("nccl"));
        assert_eq!(backend_in("INFO rank=0 backend=store data-parallel").as_deref(), Some("store"));
        assert_eq!(backend_in("no such line"), None);
    }

    #[test]
    fn gpu_memory_of_the_process() {
        let csv = "4242, 1200\n17, 9000\n4242, 1500\n";
        assert_eq!(gpu_mib_of(csv, 4242), Some(1500));
        assert_eq!(gpu_mib_of(csv, 5), None);
        assert_eq!(gpu_mib_of("No running processes found", 5), None);
    }

    #[test]
    fn targets() {
        assert_eq!(
            target("rotnet", 3.0, 600.0, 128),
            Some(("full pretraining under 15 min".into(), true))
        );
        assert!(!target("rotnet", 6.0, 1200.0, 128).unwrap().1);
        assert!(target("simclr", 4.0, 4000.0, 512).unwrap().1);
        assert!(target("simclr", 4.0, 4000.0, 256).is_none());
        assert!(target("moco", 1.0, 1.0, 256).is_none());
    }
}
