//! `cargo xtask fetch [NAME ...] [--data-dir DIR] [--list]`: downloads, verifies and unpacks
//! datasets listed in `datasets/manifest.json`. The download code is the data crate's
//! `crates/data/src/fetch.rs`, compiled here as a module (it needs only std, `serde_json` and
//! `sha2`), so xtask still builds without libtorch.
use std::path::PathBuf;

use anyhow::{bail, Result};

#[path = "../../crates/data/src/fetch.rs"]
#[allow(dead_code)]
mod manifest_fetch;

const USAGE: &str = "usage: cargo xtask fetch NAME [NAME ...] [--data-dir DIR] | --list";

/// The data folder: `--data-dir`, else `$SELFSUP_DATA`, else `datasets/` (as
/// `selfsup_data::resolve_data_dir`).
fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("SELFSUP_DATA").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("datasets"))
}

/// Entry point.
pub fn run(args: &[String]) -> Result<()> {
    let mut names = Vec::new();
    let mut flag = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data-dir" => match it.next() {
                Some(d) => flag = Some(PathBuf::from(d)),
                None => bail!("--data-dir needs a folder; {USAGE}"),
            },
            "--list" => {
                for e in manifest_fetch::manifest()? {
                    println!("{:<14} {}", e.name, e.description);
                }
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other if other.starts_with('-') => bail!("unknown option `{other}`; {USAGE}"),
            name => names.push(name.to_string()),
        }
    }
    if names.is_empty() {
        bail!("{USAGE}");
    }
    let dir = data_dir(flag);
    for name in names {
        match manifest_fetch::fetch(&name, &dir)? {
            manifest_fetch::Fetched::AlreadyPresent(p) => {
                println!("{name}: already in {}", p.display())
            }
            manifest_fetch::Fetched::Ready(p) => {
                println!("{name}: verified and unpacked into {}", p.display())
            }
        }
    }
    Ok(())
}
