//! What the reproductions share: their command line, the run log, JSON files, where the data
//! is, and seeded subsets.
use anyhow::{bail, Context, Result};
use selfsup_data::ImageDataset;
use selfsup_eval::EvalReport;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Parsed command line of `selfsup reproduce <method>`.
#[derive(Debug, Clone)]
pub struct Args {
    /// `--profile`; `None` picks `paper` with CUDA, else `cpu`.
    pub profile: Option<String>,
    /// `--dataset` (default `cifar10`).
    pub dataset: String,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--device` (default `auto`).
    pub device: String,
    /// `--runs-dir` (default `runs`).
    pub runs_dir: PathBuf,
    /// `--results-dir` (default `results`).
    pub results_dir: PathBuf,
    /// `--force`: redo every stage.
    pub force: bool,
    /// `--set PROFILE_KEY=VALUE`, in order.
    pub sets: Vec<String>,
}

/// Parses the options after the method name; `Ok(None)` after printing `usage` for `--help`.
pub fn parse_args(args: &[String], usage: &str) -> Result<Option<Args>> {
    let mut a = Args {
        profile: None,
        dataset: "cifar10".into(),
        data_dir: None,
        device: "auto".into(),
        runs_dir: PathBuf::from("runs"),
        results_dir: PathBuf::from("results"),
        force: false,
        sets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value\n{usage}"),
            }
        };
        match key {
            "--profile" => a.profile = Some(value("--profile")?),
            "--dataset" => a.dataset = value("--dataset")?,
            "--data-dir" => a.data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--device" => a.device = value("--device")?,
            "--runs-dir" => a.runs_dir = PathBuf::from(value("--runs-dir")?),
            "--results-dir" => a.results_dir = PathBuf::from(value("--results-dir")?),
            "--force" => a.force = true,
            "--set" => a.sets.push(value("--set")?),
            "-h" | "--help" => {
                println!("{usage}");
                return Ok(None);
            }
            other => bail!("unknown argument `{other}`\n{usage}"),
        }
    }
    Ok(Some(a))
}

/// Prints and appends to `run.log`.
pub struct Log {
    file: std::fs::File,
}

impl Log {
    /// Opens the log at `path`: appends to it, or starts it afresh when `fresh` (`--force`
    /// redoes every stage, so the log of the runs it replaces goes too).
    pub fn open(path: &Path, fresh: bool) -> Result<Log> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(path)
            .with_context(|| format!("{}: cannot open the run log", path.display()))?;
        Ok(Log { file })
    }

    /// Prints `s` and appends it to the log.
    pub fn line(&mut self, s: &str) {
        println!("{s}");
        let _ = writeln!(self.file, "{s}");
    }
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// Refuses a finished training in `dir` whose saved `config.json` differs from `cfg`, the
/// config profile `profile` gives now (a stale run must not stand in for the new one).
pub fn ensure_trained_with(dir: &Path, cfg: &impl Serialize, profile: &str) -> Result<()> {
    let saved = read_json(&dir.join("config.json"))?;
    if saved != round_trip(cfg)? {
        bail!(
            "{} was trained with another config than profile `{profile}` now gives: pass --force \
             to retrain everything",
            dir.display()
        );
    }
    Ok(())
}

/// The report of a probe stage that already ran, when `file` exists: `check`ed against what
/// the profile gives now (see [`ensure_probe_matches`]), then logged and recorded in `stages`
/// as skipped. `None` when the stage has to run.
pub fn finished_probe(
    log: &mut Log,
    stages: &mut Vec<Value>,
    stage: &str,
    file: &Path,
    check: impl FnOnce(&EvalReport) -> Result<()>,
) -> Result<Option<EvalReport>> {
    if !file.exists() {
        return Ok(None);
    }
    let r = EvalReport::read(file)?;
    check(&r)?;
    log.line(&format!("[skip] {stage}: {} exists", file.display()));
    stages.push(json!({"stage": stage, "skipped": true, "seconds": r.seconds}));
    Ok(Some(r))
}

/// Refuses a finished probe report that was made under other settings than the ones the
/// profile gives now: its protocol settings, the encoder config, the seed, or the labeled and
/// test sets (name and size). `settings` is the protocol config the stage would run.
pub fn ensure_probe_matches(
    file: &Path,
    report: &EvalReport,
    settings: &impl Serialize,
    encoder: &impl Serialize,
    seed: u64,
    sets: (&ImageDataset, &ImageDataset),
    profile: &str,
) -> Result<()> {
    let (train, test) = sets;
    let mut settings = round_trip(settings)?;
    // A protocol records the normalisation it used; `null` asks it to compute one from the
    // data, so only a given one is compared.
    if settings.get("normalization").is_some_and(Value::is_null) {
        settings["normalization"] = report.settings["normalization"].clone();
    }
    let now = json!({
        "settings": settings,
        "encoder": round_trip(encoder)?,
        "seed": seed,
        "train": [train.name(), train.len()],
        "test": [test.name(), test.len()],
    });
    let saved = json!({
        "settings": report.settings,
        "encoder": report.encoder,
        "seed": report.seed,
        "train": [report.train.name, report.train.len],
        "test": [report.test.name, report.test.len],
    });
    if saved != now {
        bail!(
            "{} was made with other probe settings, encoder, seed or data than profile \
             `{profile}` now gives: pass --force to redo everything",
            file.display()
        );
    }
    Ok(())
}

/// `v` as JSON after a text round trip: saved files went through text, so values are compared
/// in the form they have after reading one back.
fn round_trip(v: &impl Serialize) -> Result<Value> {
    Ok(serde_json::from_str(&serde_json::to_string(v)?)?)
}

/// Writes pretty JSON, creating the folder.
pub fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let mut bytes = serde_json::to_vec_pretty(v)?;
    bytes.push(b'\n');
    std::fs::write(path, bytes).with_context(|| format!("{}", path.display()))
}

/// Where the data is: `--data-dir`, `$SELFSUP_DATA`, `datasets/` when it holds CIFAR-10, else
/// `../shared/datasets` when that does, else `datasets/`. Returns the folder and how it was
/// chosen.
pub fn data_dir(explicit: Option<&Path>) -> (PathBuf, String) {
    if let Some(p) = explicit {
        return (p.to_path_buf(), "from --data-dir".into());
    }
    if let Some(p) = std::env::var_os("SELFSUP_DATA") {
        return (PathBuf::from(p), "from $SELFSUP_DATA".into());
    }
    let local = PathBuf::from("datasets");
    let shared = PathBuf::from("../shared/datasets");
    if !local.join("cifar-10-batches-bin").exists() && shared.join("cifar-10-batches-bin").exists()
    {
        return (shared, "default: ../shared/datasets holds CIFAR-10".into());
    }
    (selfsup_data::resolve_data_dir(None), "default".into())
}

/// Refuses the `paper` profile on the CPU unless `--device cpu` was given: it is the published
/// protocol, a GPU job, and with `--device auto` on a machine without CUDA it would quietly run
/// for days.
pub fn refuse_paper_on_cpu(profile: &str, device_arg: &str, device: tch::Device) -> Result<()> {
    if profile == "paper" && device == tch::Device::Cpu && device_arg.trim() != "cpu" {
        bail!(
            "profile `paper` is the published protocol, a GPU job (days on a CPU), and `--device \
             {device_arg}` found no CUDA device: pass --device cpu to run it on the CPU anyway, \
             or choose --profile cpu"
        );
    }
    Ok(())
}

/// A seeded subset of `n` images, chosen as the trainer's `data.max_images` does.
pub fn subset(ds: &ImageDataset, n: Option<usize>, seed: u64, stream: &str) -> ImageDataset {
    selfsup_core::trainer::seeded_subset(ds, n, seed, stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_profile_needs_a_gpu_or_an_explicit_cpu() {
        let e = refuse_paper_on_cpu("paper", "auto", tch::Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("--device cpu") && e.contains("--profile cpu"), "{e}");
        assert!(!e.contains('\n'));
        assert!(refuse_paper_on_cpu("paper", "cpu", tch::Device::Cpu).is_ok());
        assert!(refuse_paper_on_cpu("paper", "auto", tch::Device::Cuda(0)).is_ok());
        assert!(refuse_paper_on_cpu("cpu", "auto", tch::Device::Cpu).is_ok());
    }
}
