//! `cargo xtask avx2 [--no-build] -- CMD [ARGS...]`: runs CMD as an x86 CPU with AVX2 and no
//! AVX-512 runs selfsup and PyTorch, on a machine with AVX-512 (issue 18: the plans of
//! `selfsup_core::encoders::conv` differ by instruction set, and sessions rarely get an AVX2
//! machine; `bench/README.md`, "Tiles of 4×4 without AVX-512").
//!
//! It copies the working tree (tracked and untracked, not ignored) into `target/avx2/src`, a file
//! only where its content changed (so cargo rebuilds what changed), with two edits
//! ([`EDITS`]): the C++ shims' per-instruction-set clones built for AVX2 and baseline x86-64
//! alone (`csrc/elementwise.h`: the code an AVX2 CPU runs), and `encoders::conv`'s AVX-512 test
//! answering no (its plans for CPUs without AVX-512). It builds the release `selfsup` binary and
//! the `winograd_probe` example there, in a target folder of their own, and runs CMD from the
//! project root with that build's `release/` and `release/examples/` first on `PATH` and every
//! library held to AVX2 ([`CAPS`]): libtorch's own kernels (`ATEN_CPU_CAPABILITY=avx2`), oneDNN's
//! (`ONEDNN_MAX_CPU_ISA=AVX2`) and MKL's (`MKL_ENABLE_INSTRUCTIONS=AVX2`). PyTorch run under it
//! (`$SELFSUP_PYTHON bench/train_step.py ...`) reads the same three. `cargo xtask bench train`
//! run under it (`cargo xtask avx2 -- cargo xtask bench train ...`) takes the AVX2 build's
//! `selfsup` ([`BINARY`]) and records its figures as a kind of machine of its own, "<CPU>, held
//! to AVX2", bf16 skipped ([`MARKER`]).
//!
//! What it is not: an AVX2 machine. The caches, clock and memory stay this machine's, and the
//! bf16 paths (refused on CPUs without AVX512-BF16 or AMX) still see this CPU's flags: measure
//! fp32 and channels-last only.
use crate::libtorch::{self, Torch};
use crate::tasks;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const USAGE: &str = "usage: cargo xtask avx2 [--no-build] -- CMD [ARGS...]\n\
    e.g. cargo xtask avx2 -- winograd_probe\n\
    \x20    cargo xtask avx2 -- selfsup train --config C --data synthetic:2560:32 --out R\n\
    \x20    cargo xtask avx2 --no-build -- sh -c '$SELFSUP_PYTHON bench/train_step.py --config C --fused'\n\
    \x20    cargo xtask avx2 -- cargo xtask bench train --methods supervised (recorded as a kind\n\
    \x20    of its own, \"<CPU>, held to AVX2\")";

/// The environment that holds libtorch, oneDNN and MKL to AVX2.
pub(crate) const CAPS: [(&str, &str); 3] = [
    ("ATEN_CPU_CAPABILITY", "avx2"),
    ("ONEDNN_MAX_CPU_ISA", "AVX2"),
    ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
];

/// Set to `1` for CMD: `cargo xtask bench train` run under it records its figures as a kind
/// of machine of its own, "<CPU>, held to AVX2", with bf16 skipped.
pub(crate) const MARKER: &str = "SELFSUP_HELD_TO_AVX2";

/// Set for CMD to the AVX2 build's `selfsup`, which `cargo xtask bench train` then runs.
pub(crate) const BINARY: &str = "SELFSUP_AVX2_BINARY";

/// The edits of the copied tree: (file, text, its replacement); each text must occur exactly
/// once, or the copy is refused (the code moved: the edit is to be written again).
pub(crate) const EDITS: [(&str, &str, &str); 2] = [
    (
        "crates/core/csrc/elementwise.h",
        r#"target_clones("avx512f", "avx2", "default")"#,
        r#"target_clones("avx2", "default")"#,
    ),
    (
        "crates/core/src/encoders/conv.rs",
        r#"std::arch::is_x86_feature_detected!("avx512f")"#,
        "false",
    ),
];

#[derive(Debug, PartialEq)]
struct Opts {
    build: bool,
    cmd: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut build = true;
    let mut it = args.iter();
    for a in it.by_ref() {
        match a.as_str() {
            "--no-build" => build = false,
            "--" => break,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let cmd: Vec<String> = it.cloned().collect();
    if cmd.is_empty() {
        bail!("no command after --\n{USAGE}");
    }
    Ok(Opts { build, cmd })
}

/// `text` with `edit` applied, or an error naming the file when its text does not occur exactly
/// once.
pub(crate) fn apply(file: &str, text: &str, (from, to): (&str, &str)) -> Result<String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => {
            bail!("{file}: `{from}` occurs {n} times (expected once); the AVX2 edit needs updating")
        }
    }
}

/// Copies the working tree into `dst` with [`EDITS`], writing only the files whose content
/// differs from the copy's, and removes the copy's files the tree no longer has.
fn copy_tree(root: &Path, dst: &Path) -> Result<()> {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root)
        .output()
        .context("running git ls-files")?;
    if !out.status.success() {
        bail!("git ls-files: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut edited = 0;
    let mut kept = std::collections::HashSet::new();
    for rel in out.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let rel = std::str::from_utf8(rel).context("a path that is not UTF-8")?;
        let src = root.join(rel);
        if !src.is_file() {
            continue; // deleted in the working tree, or a submodule
        }
        kept.insert(dst.join(rel));
        let mut bytes = std::fs::read(&src).with_context(|| format!("reading {rel}"))?;
        if let Some((file, from, to)) = EDITS.iter().find(|(f, _, _)| *f == rel) {
            let text = String::from_utf8(bytes).with_context(|| format!("{rel}: not UTF-8"))?;
            bytes = apply(file, &text, (from, to))?.into_bytes();
            edited += 1;
        }
        let to = dst.join(rel);
        if std::fs::read(&to).ok().as_deref() != Some(&bytes[..]) {
            std::fs::create_dir_all(to.parent().expect("a file's folder"))?;
            std::fs::write(&to, &bytes).with_context(|| format!("writing {}", to.display()))?;
        }
    }
    if edited != EDITS.len() {
        bail!("the working tree lacks a file the AVX2 edits change ({edited} of {})", EDITS.len());
    }
    prune(dst, &kept)
}

/// Removes the files under `dir` that are not in `kept`.
fn prune(dir: &Path, kept: &std::collections::HashSet<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        if path.is_dir() {
            prune(&path, kept)?;
        } else if !kept.contains(&path) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Copies the tree at `root` into `base/src` and builds its `selfsup` and `winograd_probe` into
/// `base/target`.
fn build(t: &Torch, root: &Path, base: &Path) -> Result<()> {
    let src = base.join("src");
    copy_tree(root, &src)?;
    for args in [
        &["build", "--release", "--bin", "selfsup"][..],
        &["build", "--release", "-p", "selfsup-core", "--example", "winograd_probe"],
    ] {
        let mut c = tasks::cargo(t);
        c.args(args).current_dir(&src).env("CARGO_TARGET_DIR", base.join("target"));
        tasks::run(c)?;
    }
    Ok(())
}

/// `cargo xtask avx2`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let t = libtorch::ensure()?;
    let base = root.join("target").join("avx2");
    if o.build {
        build(&t, root, &base)?;
    }
    let release = base.join("target").join("release");
    if !release.join("selfsup").exists() {
        bail!("{}: no AVX2 build (run without --no-build)", release.display());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let mut c = Command::new(&o.cmd[0]);
    c.args(&o.cmd[1..]).env(
        "PATH",
        format!("{}:{}:{path}", release.display(), release.join("examples").display()),
    );
    t.apply(&mut c);
    for (k, v) in CAPS {
        c.env(k, v);
    }
    c.env(MARKER, "1").env(BINARY, release.join("selfsup"));
    eprintln!("xtask avx2: {}", CAPS.map(|(k, v)| format!("{k}={v}")).join(" "));
    tasks::run(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args as s;

    #[test]
    fn options_and_command() {
        let o = parse(&s(&["--", "selfsup", "train", "--no-build"])).unwrap();
        assert_eq!(o, Opts { build: true, cmd: s(&["selfsup", "train", "--no-build"]) });
        assert!(!parse(&s(&["--no-build", "--", "winograd_probe"])).unwrap().build);
        assert!(parse(&s(&["--"])).unwrap_err().to_string().contains("no command"));
        assert!(parse(&s(&["--fast", "--", "x"])).unwrap_err().to_string().contains("--fast"));
    }

    #[test]
    fn the_copy_follows_the_tree_with_the_edits_made() {
        let repo = tempfile::tempdir().unwrap();
        let root = repo.path();
        let git = |args: &[&str]| {
            let st = Command::new("git").args(args).current_dir(root).status().unwrap();
            assert!(st.success(), "git {args:?}");
        };
        git(&["init", "-q"]);
        for (file, from, _) in EDITS {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), format!("before {from} after\n")).unwrap();
        }
        std::fs::write(root.join("kept.txt"), "kept").unwrap();
        std::fs::write(root.join(".gitignore"), "ignored.txt\n").unwrap();
        std::fs::write(root.join("ignored.txt"), "no").unwrap();
        git(&["add", "."]);
        let out = tempfile::tempdir().unwrap();
        let dst = out.path().join("copy");
        std::fs::create_dir_all(dst.join("old")).unwrap();
        std::fs::write(dst.join("old").join("gone.rs"), "stale").unwrap();
        copy_tree(root, &dst).unwrap();
        for (file, _, to) in EDITS {
            assert_eq!(
                std::fs::read_to_string(dst.join(file)).unwrap(),
                format!("before {to} after\n")
            );
        }
        assert_eq!(std::fs::read_to_string(dst.join("kept.txt")).unwrap(), "kept");
        assert!(!dst.join("ignored.txt").exists(), "ignored files stay out");
        assert!(!dst.join("old").join("gone.rs").exists(), "files the tree lacks are removed");
        // A tree whose edited text moved is refused, naming the file.
        std::fs::write(root.join(EDITS[0].0), "moved").unwrap();
        let e = copy_tree(root, &dst).unwrap_err().to_string();
        assert!(e.contains(EDITS[0].0) && e.contains("0 times"), "{e}");
    }

    #[test]
    fn the_edits_apply_once_to_the_tree_as_it_is() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for (file, from, to) in EDITS {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let edited = apply(file, &text, (from, to)).unwrap();
            assert!(!edited.contains(from) && edited.contains(to), "{file}");
        }
        let e = apply("f.h", "a a", ("a", "b")).unwrap_err().to_string();
        assert!(e.contains("f.h") && e.contains("2 times"), "{e}");
        assert!(apply("f.h", "", ("a", "b")).unwrap_err().to_string().contains("0 times"));
    }
}
