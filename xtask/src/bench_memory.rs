//! `cargo xtask bench memory [--threads 2] [--loader-images 500000] [--skip-epoch]`: the
//! memory of the release `selfsup` binary, read from `/proc/<pid>/status` every 100 ms while it
//! runs (Linux):
//!
//! 1. the peak resident set (`VmHWM`) of one epoch of the RotNet cpu profile's own training
//!    (`results/rotnet/cpu/configs/rotnet_four.json`, CIFAR-10 from `SELFSUP_DATA`);
//! 2. the loader over a generated dataset ten times CIFAR-10's 50,000 training images
//!    (`synthetic:500000:32`, held in memory, 1.5 GB of pixels) with a tiny trunk, so that the
//!    loader dominates: the anonymous resident memory (`RssAnon`, what the process allocates)
//!    once the first fifth of the run is behind it, against its largest value afterwards.
//!    The loader's memory is flat when that growth stays within [`FLAT_MIB`].
//!
//! Prints both and writes `results/bench/memory.json` with the CPU's name.
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Growth of the anonymous resident set, after the first fifth of the loader run, that still
/// counts as flat: allocator caches and libtorch's thread pools settle within it.
const FLAT_MIB: f64 = 64.0;

pub(crate) const USAGE: &str =
    "usage: cargo xtask bench memory [--threads 2] [--loader-images 500000] [--skip-epoch]";

struct Opts {
    threads: usize,
    loader_images: usize,
    skip_epoch: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts { threads: 2, loader_images: 500_000, skip_epoch: false };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| crate::bench_data::number(&mut it, name, USAGE);
        match a.as_str() {
            "--threads" => o.threads = num("--threads")?,
            "--loader-images" => o.loader_images = num("--loader-images")?,
            "--skip-epoch" => o.skip_epoch = true,
            other => bail!("unknown option `{other}`; {USAGE}"),
        }
    }
    Ok(o)
}

/// What [`watch`] saw of a process.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    /// `(seconds since start, VmRSS kB, RssAnon kB)` every 100 ms.
    pub samples: Vec<(f64, u64, u64)>,
    /// The largest `VmHWM` read (kB): the peak resident set up to the last sample.
    pub peak_kb: u64,
    /// Wall seconds.
    pub seconds: f64,
}

/// A `kB` field of a `/proc/<pid>/status` text.
fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd` to its end, sampling its memory every 100 ms; its stdout goes to `stdout`, its
/// stderr to `log` (whose last line a failure quotes).
pub(crate) fn watch(mut cmd: Command, log: &Path, stdout: Stdio) -> Result<Watched> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child =
        cmd.stdout(stdout).stderr(err).spawn().with_context(|| format!("starting {program}"))?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut w = Watched::default();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            if let (Some(rss), Some(anon)) = (status_kb(&s, "VmRSS:"), status_kb(&s, "RssAnon:")) {
                w.samples.push((start.elapsed().as_secs_f64(), rss, anon));
            }
            w.peak_kb = w.peak_kb.max(status_kb(&s, "VmHWM:").unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    w.seconds = start.elapsed().as_secs_f64();
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{program} failed ({status}), see {}: {}", log.display(), failure_line(&text));
    }
    Ok(w)
}

/// The line of a failed process's stderr that says why it failed: the last exception line of
/// a Python traceback (`RuntimeError: ...`, `torch._dynamo.exc.BackendCompilerFailed: ...`;
/// hints printed after it, such as dynamo's `Set TORCHDYNAMO_VERBOSE=1 ...`, are skipped),
/// else the last line that is not blank.
pub(crate) fn failure_line(stderr: &str) -> &str {
    let exception = |l: &&str| {
        l.split_once(": ").is_some_and(|(name, _)| {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && ["Error", "Exception", "Failed", "Interrupt", "Exit"]
                    .iter()
                    .any(|end| name.ends_with(end))
        })
    };
    let mut lines = stderr.lines().rev().map(str::trim).filter(|l| !l.is_empty());
    lines.clone().find(exception).or_else(|| lines.next()).unwrap_or("")
}

/// `(median anonymous MiB over the run's second fifth, median over its last fifth)`. The
/// loader allocates and frees batches all along, so the memory swings by a few hundred MiB at
/// any time (1.70 to 1.95 GiB in the first full run): single samples (the first after
/// warm-up against the largest after it) read churn as growth; the medians of two windows
/// do not. The first fifth (start-up, the dataset's allocation) is left out.
fn growth(samples: &[(f64, u64, u64)], seconds: f64) -> Option<(f64, f64)> {
    let median = |lo: f64, hi: f64| {
        let mut w: Vec<u64> = samples
            .iter()
            .filter(|s| s.0 >= lo * seconds && s.0 < hi * seconds)
            .map(|s| s.2)
            .collect();
        w.sort_unstable();
        w.get(w.len() / 2).map(|&kb| kb as f64 / 1024.0)
    };
    Some((median(0.2, 0.4)?, median(0.8, 1.0 + 1e-9)?))
}

/// The CPU's model name with its family and model numbers, from `/proc/cpuinfo`.
pub fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|n| n.trim() == k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!("{} (family {}, model {})", field("model name"), field("cpu family"), field("model"))
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Runs the benchmark.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let bin = crate::tasks::build_release()?;
    let data = std::env::var("SELFSUP_DATA").unwrap_or_else(|_| "datasets".into());
    let tmp = std::env::temp_dir().join(format!("selfsup-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let base = |out: &str| {
        let mut c = Command::new(&bin);
        c.args(["train", "--device", "cpu", "--no-progress", "--out"])
            .arg(tmp.join(out))
            .args(["--set", &format!("train.threads={}", o.threads)])
            .env("RUST_LOG", "warn");
        c
    };
    let cpu = cpu_name();
    let mut report = json!({"cpu": cpu, "threads": o.threads});
    if !o.skip_epoch {
        let config = Path::new("results/rotnet/cpu/configs/rotnet_four.json");
        if !config.is_file() {
            bail!("{} is missing: run from the workspace root", config.display());
        }
        let mut c = base("epoch");
        c.arg("--config").arg(config);
        c.args(["--set", "train.epochs=1", "--set", &format!("data.data_dir={data}")]);
        let w = watch(c, &tmp.join("epoch.log"), Stdio::null())?;
        println!(
            "RotNet cpu profile, one epoch of CIFAR-10 ({} threads, {cpu}): peak resident {:.0} \
             MiB, {:.0} s",
            o.threads,
            mib(w.peak_kb),
            w.seconds
        );
        report["rotnet_cpu_epoch"] = json!({
            "config": config, "peak_resident_mib": mib(w.peak_kb), "seconds": w.seconds,
        });
    }
    let spec = format!("synthetic:{}:32", o.loader_images);
    let mut c = base("loader");
    c.args(["--method", "rotnet", "--data", &spec])
        .args(["--set", "encoder={\"kind\":\"tiny\",\"width\":8}"])
        .args(["--set", "train.batch_size=256", "--set", "train.epochs=1"])
        .args(["--set", "train.checkpoint_minutes=0", "--set", "train.log_every=100"])
        // oneDNN on: the steps only load the CPU while the loader is watched (with it off the
        // epoch took 28 minutes at ~300 images/s).
        .args(["--set", "train.deterministic=false"]);
    let w = watch(c, &tmp.join("loader.log"), Stdio::null())?;
    // The medians of the run's second and last fifths.
    let (settled, last) = growth(&w.samples, w.seconds).context("no memory samples were read")?;
    let grew = last - settled;
    let flat = grew <= FLAT_MIB;
    println!(
        "loader, {spec} (10x CIFAR-10's training set), tiny trunk, one epoch: anonymous \
         resident {settled:.0} MiB (median of the second fifth), {last:.0} MiB (of the last) ({grew:+.0} \
         MiB: {}), peak resident {:.0} MiB, {:.0} s",
        if flat { "flat" } else { "NOT flat" },
        mib(w.peak_kb),
        w.seconds
    );
    let pixels_mib = (o.loader_images * 32 * 32 * 3) as f64 / (1024.0 * 1024.0);
    report["loader"] = json!({
        "dataset": spec, "pixels_mib": pixels_mib, "anon_mib_median_second_fifth": settled,
        "anon_mib_median_last_fifth": last, "growth_mib": grew, "flat_within_mib": FLAT_MIB, "flat": flat,
        "peak_resident_mib": mib(w.peak_kb), "seconds": w.seconds,
        "samples_s_rss_anon_kb": w.samples.iter().step_by(10).collect::<Vec<_>>(),
    });
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Path::new("results/bench/memory.json");
    crate::tasks::write_json(out, &report)?;
    println!("wrote {}", out.display());
    if !flat {
        bail!("the loader's memory grew by {grew:.0} MiB over one epoch (more than {FLAT_MIB})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_quoted_by_its_exception_line() {
        // The tail of a real `torch.compile` failure (bench/reference/moco.py shuffling with
        // `randperm`): the exception, then dynamo's hints.
        let log = "Traceback (most recent call last):\n  File \"x.py\", line 3, in check_fn\n    \
                   raise RuntimeError(\ntorch._dynamo.exc.BackendCompilerFailed: backend='inductor' \
                   raised:\nRuntimeError: Not all inputs to pattern found in match.kwargs.\n\n\
                   Set TORCHDYNAMO_VERBOSE=1 for the internal stack trace\n\n";
        assert_eq!(
            failure_line(log),
            "RuntimeError: Not all inputs to pattern found in match.kwargs."
        );
        // No traceback: the last line that is not blank; nothing: nothing.
        assert_eq!(
            failure_line("warming up\nout of memory: step 3\n  \n"),
            "out of memory: step 3"
        );
        assert_eq!(failure_line("ValueError: bad value\n"), "ValueError: bad value");
        assert_eq!(failure_line(""), "");
    }

    #[test]
    fn status_fields_and_growth_are_read() {
        let s = "Name:\tselfsup\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t 512 kB\n";
        assert_eq!(status_kb(s, "VmHWM:"), Some(2048));
        assert_eq!(status_kb(s, "RssAnon:"), Some(512));
        assert_eq!(status_kb(s, "VmSwap:"), None);
        // Churn (the same swing all along) is no growth; a trend is. The first fifth is left
        // out, and the process's exit (one low sample at the end) does not move a median.
        let swing = |t: u64| if t.is_multiple_of(2) { 1_800 * 1024 } else { 1_950 * 1024 };
        let mut churn: Vec<(f64, u64, u64)> = (0..100).map(|t| (t as f64, 0, swing(t))).collect();
        churn[0].2 = 10;
        churn[99].2 = 200 * 1024;
        let (a, b) = growth(&churn, 100.0).unwrap();
        assert!(b - a <= FLAT_MIB, "churn read as growth: {a} -> {b}");
        let rising: Vec<(f64, u64, u64)> = (0..100).map(|t| (t as f64, 0, 1024 * t)).collect();
        let (a, b) = growth(&rising, 100.0).unwrap();
        assert_eq!((a, b), (30.0, 90.0));
        assert_eq!(growth(&[], 1.0), None);
        assert!(parse(&["--threads".into()]).is_err());
        assert!(parse(&["--bogus".into()]).is_err());
        assert_eq!(parse(&["--loader-images".into(), "10".into()]).unwrap().loader_images, 10);
    }
}
