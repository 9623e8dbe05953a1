//! The engine's files: the run log, JSON read and write, and the checks that a finished
//! training or probe was made under the settings the plan gives now.
use anyhow::{bail, Context, Result};
use selfsup_core::config::RunConfig;
use selfsup_data::ImageDataset;
use selfsup_eval::EvalReport;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

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
/// config profile `profile` gives now (a stale run must not stand in for the new one). The
/// data folder counts as the same when both name the same folder
/// ([`selfsup_core::config::same_data_folder`]).
pub fn ensure_trained_with(dir: &Path, cfg: &RunConfig, profile: &str) -> Result<()> {
    // Read back through the config type, so that a field added since (with its default) is
    // not a difference.
    let saved: RunConfig = serde_json::from_value(read_json(&dir.join("config.json"))?)
        .with_context(|| format!("{}/config.json", dir.display()))?;
    let mut saved = round_trip(&saved)?;
    let now = round_trip(cfg)?;
    let saved_dir = saved["data"]["data_dir"].as_str().map(Path::new);
    if selfsup_core::config::same_data_folder(saved_dir, cfg.data.data_dir.as_deref()) {
        saved["data"]["data_dir"] = now["data"]["data_dir"].clone();
    }
    if saved != now {
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

/// Writes pretty JSON atomically (a temporary file renamed over `path`), creating the folder.
pub fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v)?;
    bytes.push(b'\n');
    write_file(path, &bytes)
}

/// Writes `bytes` to `path` atomically, creating the folder.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    // The error names the file.
    Ok(selfsup_core::checkpoint::write_atomic(path, bytes)?)
}
