//! Test helper: runs a Python reference script (with the torch that `cargo xtask` installs,
//! named by `SELFSUP_PYTHON`) and returns whether it succeeded and what it printed.
use std::ffi::OsStr;
use std::path::Path;

/// Runs `python -c script dir`; returns (success, stdout + stderr) and echoes the output.
pub(crate) fn run_script(python: &OsStr, script: &str, dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run SELFSUP_PYTHON={python:?}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    (out.status.success(), text)
}
