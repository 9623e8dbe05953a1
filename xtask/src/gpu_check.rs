//! `cargo xtask gpu-check` (issue 18): the one prepared command for a machine with a GPU. It
//! builds the release `selfsup` binary (or takes one built elsewhere with `--binary`), asks
//! `selfsup reproduce <method> --profile paper --configs-only` for the paper profile's
//! pretraining config of RotNet and SimCLR, trains each for a few epochs on CUDA, and prints
//! seconds per epoch, images per second, the GPU memory the process held (sampled from
//! `nvidia-smi`) and the full protocol's pretraining time extrapolated from the steady epochs,
//! against the targets on one H100/H200 (RotNet's 200-epoch pretraining under 15
//! minutes; SimCLR ResNet-18 on CIFAR-10 under 5 s an epoch at batch 512). These runs take the
//! CUDA path of every training: batches prefetched to the device on a side stream
//! (`selfsup_core::stage`), cuDNN's autotuner, the fused optimizers. Unless `--no-job`,
//! each method also trains as the one rank of a data-parallel job (`selfsup launch --nproc 1`,
//! on NCCL when the binary was built with `--features nccl`), and the cost of the distributed
//! wrapper is printed against issue 19's target (under 3%). Writes
//! `results/bench/gpu-check.json`.
//!
//! The data is CIFAR-10 when `$SELFSUP_DATA` (or `--data-dir`) holds it, else generated
//! images of the same number and size (`synthetic:50000:32`): speed does not depend on the
//! pixels, and a device machine may not carry the dataset. On a CPU, `--device cpu --profile
//! smoke` runs the same path in seconds.
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const USAGE: &str = "usage: cargo xtask gpu-check [--binary PATH] [--epochs 3] \
    [--methods rotnet,simclr] [--device cuda] [--profile paper] [--data SPEC] [--data-dir DIR] \
    [--no-job]";

#[derive(Debug, PartialEq)]
struct Opts {
    binary: Option<PathBuf>,
    epochs: u64,
    methods: Vec<String>,
    device: String,
    profile: String,
    data: Option<String>,
    data_dir: Option<PathBuf>,
    /// Also train each method as the one rank of a data-parallel job (`selfsup launch
    /// --nproc 1`) and report the distributed wrapper's cost (issue 19: under 3%).
    job: bool,
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
/// but the first (start-up, cuDNN's algorithm search, allocator growth), or the first alone
/// when it is the only one.
fn steady(epochs: &[(u64, u64, f64)]) -> Option<(f64, u64)> {
    let mut per: Vec<(f64, u64)> = Vec::new();
    let mut last_step = 0;
    for &(_, step, s) in epochs {
        per.push((s, step - last_step.min(step)));
        last_step = step;
    }
    let steady = if per.len() > 1 { &per[1..] } else { &per[..] };
    let mut sorted = steady.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    sorted.get(sorted.len() / 2).copied()
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
    let mut rows = Vec::new();
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
        let batch = v["train"]["batch_size"].as_u64().context("config without batch_size")?;
        let epochs = format!("train.epochs={}", o.epochs);
        // Trains the config for `o.epochs` epochs (`launch`: as the one rank of a data-parallel
        // job, the distributed wrapper's path) and returns (s/epoch, steps, GPU MiB, wall s).
        let train = |name: &str, launch: bool| -> Result<(f64, u64, Option<u64>, f64)> {
            let run_dir = tmp.join("runs").join(name);
            let head: &[&str] =
                if launch { &["launch", "--nproc", "1", "train"] } else { &["train"] };
            let mut c = selfsup(head);
            c.args(["--no-progress", "--device", &o.device, "--data", &data]);
            c.arg("--config").arg(&config).arg("--out").arg(&run_dir);
            c.arg("--data-dir").arg(&data_dir).args(["--set", &epochs]);
            let started = Instant::now();
            let log = tmp.join(format!("{name}.log"));
            let gpu_mib = run_sampled(c, &log, on_gpu && gpu.is_some())?;
            let wall = started.elapsed().as_secs_f64();
            let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
            let (s, steps) = steady(&epoch_lines(&metrics)).context("no epoch lines in metrics")?;
            Ok((s, steps, gpu_mib, wall))
        };
        let (s, steps, gpu_mib, wall) = train(m, false)?;
        let job = if o.job {
            let (js, ..) = train(&format!("{m}-job"), true)?;
            println!(
                "{m:<8} as a 1-rank data-parallel job ({} backend): {js:.2} s/epoch, {:+.1}% \
                 against the plain run (target under 3%)",
                if on_gpu { "nccl when built with --features nccl, else store" } else { "store" },
                100.0 * (js / s - 1.0)
            );
            Some(js)
        } else {
            None
        };
        let images_s = (steps * batch) as f64 / s;
        let full_s = s * full_epochs as f64;
        // The targets are the paper protocols'; a smoke or cpu profile has none.
        let t = if o.profile == "paper" { target(m, s, full_s, batch) } else { None };
        println!(
            "{m:<8} {}: {s:.2} s/epoch ({} steps of {batch}), {images_s:.0} images/s, GPU \
             memory {}, {o_epochs} epochs in {wall:.0} s; the full {full_epochs} epochs: {:.1} \
             min{}",
            config.file_stem().unwrap_or_default().to_string_lossy(),
            steps,
            gpu_mib.map_or("not sampled".into(), |m| format!("{m} MiB")),
            full_s / 60.0,
            t.as_ref().map_or(String::new(), |(what, ok)| format!(
                " (target: {what}: {})",
                if *ok { "met" } else { "NOT met" }
            )),
            o_epochs = o.epochs,
        );
        rows.push(json!({
            "method": m, "config": v, "epochs_run": o.epochs, "wall_s": wall,
            "s_per_epoch": s, "steps_per_epoch": steps, "batch_size": batch,
            "images_per_s": images_s, "gpu_memory_mib": gpu_mib,
            "full_epochs": full_epochs, "full_pretraining_min": full_s / 60.0,
            "target": t.as_ref().map(|(w, _)| w.clone()), "target_met": t.map(|(_, ok)| ok),
            "job_s_per_epoch": job, "job_overhead": job.map(|js| js / s - 1.0),
        }));
    }
    let report = json!({
        "device": o.device, "gpu": gpu, "cpu": crate::bench_memory::cpu_name(),
        "profile": o.profile, "data": data, "binary": bin.display().to_string(), "runs": rows,
    });
    let out = Path::new("results/bench/gpu-check.json");
    std::fs::create_dir_all("results/bench")?;
    std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("wrote {}", out.display());
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
        assert_eq!(steady(&[]), None);
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
