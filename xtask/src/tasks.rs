//! The xtask commands: each makes sure libtorch is present, then runs cargo or the release
//! binary with the right environment.
use crate::libtorch::{self, Torch};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a command to completion, failing with its command line on a non-zero exit.
pub(crate) fn run(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

/// Writes `text` to `path` whole or not at all: into a temporary file beside it, then renamed
/// over it, so a run cut short never leaves a half-written record (`results/bench/train.json`
/// holds every machine's figures). Creates the folder; errors name the file.
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let name = path.file_name().with_context(|| format!("{}: no file name", path.display()))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    written.with_context(|| {
        // Neither a half-written temporary file nor the record is left changed.
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}", path.display())
    })
}

/// [`write_atomic`] of `value` as pretty JSON with a final newline.
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    write_atomic(path, &(serde_json::to_string_pretty(value)? + "\n"))
}

/// When and on which code a figure was measured: `{"date": "YYYY-MM-DD" (UTC), "commit": the
/// checkout's `HEAD` at `root`, with `+changes` when its tracked files outside `results/` differ
/// from it}`; the commit is `unknown` outside a git checkout. Records keep it beside each
/// figure, so a table shows which rows predate a change.
pub(crate) fn measured(root: &Path) -> serde_json::Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            // The records under `results/` are what a bench writes, not code it measures.
            let status = ["status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"];
            let dirty = git(&status).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}+changes")
            } else {
                c
            }
        }
        _ => "unknown".into(),
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    serde_json::json!({ "date": civil_date(secs / 86_400), "commit": commit })
}

/// The UTC calendar date `YYYY-MM-DD` of `days` since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `cargo` with the libtorch environment.
pub(crate) fn cargo(t: &Torch) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    t.apply(&mut c);
    c
}

/// Points `SELFSUP_DATA` at `../shared/datasets` when it is unset and that folder exists.
pub(crate) fn default_data_dir() {
    if std::env::var_os("SELFSUP_DATA").is_some() {
        return;
    }
    let shared = PathBuf::from("../shared/datasets");
    if shared.is_dir() {
        if let Ok(abs) = shared.canonicalize() {
            eprintln!("xtask: SELFSUP_DATA={} (../shared/datasets)", abs.display());
            std::env::set_var("SELFSUP_DATA", abs);
        }
    }
}

/// `cargo xtask env`: shell exports for plain cargo.
pub fn env() -> Result<()> {
    let t = libtorch::ensure()?;
    for (k, v) in t.envs() {
        println!("export {k}='{v}'");
    }
    Ok(())
}

/// Builds the release binary and returns its path.
pub fn build_release() -> Result<PathBuf> {
    let t = libtorch::ensure()?;
    let mut c = cargo(&t);
    c.args(["build", "--release", "--bin", "selfsup"]);
    run(c)?;
    Ok(PathBuf::from("target/release/selfsup"))
}

/// `cargo xtask run -- <args>`.
pub fn run_binary(args: &[String]) -> Result<()> {
    let bin = build_release()?;
    let args = args.strip_prefix(&["--".to_string()]).unwrap_or(args);
    default_data_dir();
    let mut c = Command::new(bin);
    c.args(args);
    libtorch::ensure()?.apply(&mut c);
    run(c)
}

/// `cargo xtask test`: fmt check, clippy with `-D warnings`, all tests.
pub fn test(args: &[String]) -> Result<()> {
    let t = libtorch::ensure()?;
    default_data_dir();
    let mut fmt = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt).context("formatting differs: run `cargo fmt --all`")?;
    let mut clippy = cargo(&t);
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run(clippy)?;
    // The NCCL backend is not in the default build (it needs CUDA's headers): compiled and
    // linted here so that it does not rot, run only where a GPU is (`gpu-check`).
    if libtorch::cuda_headers(&t.libtorch).is_some() {
        let mut nccl = cargo(&t);
        nccl.args(["clippy", "-p", "selfsup-dist", "--features", "nccl", "--all-targets"]);
        nccl.args(["--", "-D", "warnings"]);
        run(nccl)?;
    } else {
        eprintln!("xtask: no CUDA headers beside torch: the `nccl` feature is not checked");
    }
    let mut test = cargo(&t);
    test.args(["test", "--workspace"]).args(args);
    run(test)
}

/// `cargo xtask reproduce <method> ...`: builds the release binary and runs
/// `selfsup reproduce <method> ...`.
pub fn reproduce(args: &[String]) -> Result<()> {
    if args.is_empty() {
        bail!("usage: cargo xtask reproduce <method> [--profile smoke|cpu|paper] [--force]");
    }
    let bin = build_release()?;
    default_data_dir();
    let mut c = Command::new(bin);
    c.arg("reproduce").args(args);
    libtorch::ensure()?.apply(&mut c);
    run(c)
}

/// `cargo xtask bench <what>`.
pub fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some(what @ ("data" | "memory")) => {
            let t = libtorch::ensure()?;
            default_data_dir();
            for (k, v) in t.envs() {
                std::env::set_var(k, v);
            }
            if what == "data" {
                crate::bench_data::run(&args[1..])
            } else {
                crate::bench_memory::run(&args[1..])
            }
        }
        Some("train") => {
            let t = libtorch::ensure()?;
            crate::bench_train::run(&t, &args[1..])
        }
        Some("ops") => {
            let t = libtorch::ensure()?;
            crate::bench_ops::run(&t, &args[1..])
        }
        Some(other) => bail!("unknown benchmark `{other}` (known: data, train, memory, ops)"),
        None => bail!("usage: cargo xtask bench data|train|memory|ops"),
    }
}

/// `cargo xtask fetch <dataset>`.
pub fn fetch(args: &[String]) -> Result<()> {
    crate::fetch::run(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_the_commit_measured() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(59), "1970-03-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_792), "2026-12-05");
        assert_eq!(civil_date(20_819), "2027-01-01");
        let m = measured(&crate::project_root());
        let date = m["date"].as_str().unwrap();
        assert!(date.len() == 10 && date.starts_with("20"), "{m}");
        // In a checkout: 12 hex digits, then `+changes` or nothing; elsewhere `unknown`.
        let commit = m["commit"].as_str().unwrap();
        let hex = commit.split('+').next().unwrap();
        assert!(
            commit == "unknown" || hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        );
        let outside = tempfile::tempdir().unwrap();
        assert_eq!(measured(outside.path())["commit"], "unknown");
        // A scratch checkout: a changed record under `results/` is not a change of the code
        // measured; a changed source file is.
        let repo = outside.path();
        let git = |args: &[&str]| {
            let st = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"])
                .args(args)
                .current_dir(repo)
                .output();
            st.is_ok_and(|o| o.status.success())
        };
        std::fs::create_dir_all(repo.join("results")).unwrap();
        std::fs::write(repo.join("results/train.json"), "{}").unwrap();
        std::fs::write(repo.join("code.rs"), "a").unwrap();
        if git(&["init", "-q"]) && git(&["add", "."]) && git(&["commit", "-qm", "c"]) {
            let clean = measured(repo)["commit"].as_str().unwrap().to_string();
            assert_eq!(clean.len(), 12, "{clean}");
            std::fs::write(repo.join("results/train.json"), "{\"a\": 1}").unwrap();
            assert_eq!(measured(repo)["commit"], clean.as_str(), "a record written");
            std::fs::write(repo.join("code.rs"), "b").unwrap();
            assert_eq!(measured(repo)["commit"], format!("{clean}+changes"), "code changed");
        }
    }

    #[test]
    fn a_record_is_written_whole_and_a_bad_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench").join("train.json");
        write_json(&path, &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\n  \"a\": 1\n}\n");
        write_atomic(&path, "second\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        // Nothing but the record is left in the folder.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["train.json"]);
        // A folder where the record should go: refused, naming it, and no temporary file left.
        let taken = dir.path().join("taken");
        std::fs::create_dir_all(taken.join("inside")).unwrap();
        let e = format!("{:#}", write_atomic(&taken, "x").unwrap_err());
        assert!(e.contains(&taken.display().to_string()), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "bench/ and taken/ only");
        // A file where the folder should be.
        let e = format!("{:#}", write_atomic(&path.join("x.json"), "x").unwrap_err());
        assert!(e.contains("creating") && e.contains("train.json"), "{e}");
    }
}
