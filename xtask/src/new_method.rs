//! `cargo xtask new-method NAME`: scaffolds `crates/NAME` (Cargo.toml, a documented
//! `PretextMethod` with its config and defaults, `register`, a test that trains a few steps)
//! and wires it in: the workspace dependency, the `selfsup-methods` dependency and registration
//! line, and the registry test's list. `cargo xtask test` passes straight after; `selfsup
//! methods` lists the method and `selfsup reproduce zoo --methods NAME` trains it.
//!
//! The skeleton is a real, if weak, pretext task so that everything runs from the first
//! minute: the network tells upright images from upside-down ones (a two-way RotNet). Replace
//! its step with the method's own.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The names a method goes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The registry name and folder (`my-method`).
    pub name: String,
    /// The crate (`selfsup-my-method`).
    pub krate: String,
    /// The crate as a Rust path (`selfsup_my_method`).
    pub ident: String,
    /// The method's type (`MyMethod`); its config is `MyMethodConfig`.
    pub ty: String,
}

impl Names {
    /// Checks `name`: lowercase ASCII letters, digits and single hyphens, starting with a
    /// letter.
    pub fn new(name: &str) -> Result<Names> {
        let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.ends_with('-')
            && !name.contains("--");
        if !ok {
            bail!(
                "method name `{name}`: use lowercase letters, digits and single hyphens, starting \
                 with a letter (e.g. `upside-down`)"
            );
        }
        let ty = name
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next().map_or(String::new(), |f| f.to_ascii_uppercase().to_string() + c.as_str())
            })
            .collect();
        Ok(Names {
            name: name.into(),
            krate: format!("selfsup-{name}"),
            ident: format!("selfsup_{}", name.replace('-', "_")),
            ty,
        })
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("{{name}}", &self.name)
            .replace("{{crate}}", &self.krate)
            .replace("{{ident}}", &self.ident)
            .replace("{{Type}}", &self.ty)
    }
}

const CARGO_TOML: &str = r#"[package]
name = "{{crate}}"
description = "{{name}}: a pretext method of selfsup (say what it learns and cite its paper)"
version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true

[dependencies]
selfsup-core.workspace = true
selfsup-data.workspace = true
tch.workspace = true
serde.workspace = true
serde_json.workspace = true

[lints]
workspace = true
"#;

const LIB_RS: &str = r#"//! {{name}}: a pretext method (say which paper it follows, and where the official code is).
//!
//! Scaffolded by `cargo xtask new-method {{name}}`: the network tells upright images from
//! upside-down ones, a two-way RotNet, so that the crate trains from the first minute. Replace
//! [`method::{{Type}}::step`] with the method's own; see `CONTRIBUTING.md`.
//!
//! - [`config`]: the method config, with documented defaults;
//! - [`method`]: the method as a [`PretextMethod`];
//! - [`register`]: adds `{{name}}` to a [`Registry`].
#![deny(missing_docs)]

pub mod config;
pub mod method;

pub use config::{{Type}}Config;
pub use method::{{Type}};

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value({{Type}}Config::default()).expect("{{Type}}Config serializes")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: {{Type}}Config = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("{{name}} method_config: {e}")))?;
    Ok(Box::new({{Type}}::new(root, cfg, ctx)?))
}

/// Registers `{{name}}` (config: [`{{Type}}Config`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "{{name}}",
        description: "{{name}}: tell upright images from upside-down ones (scaffold: describe \
                      the method and cite its paper)",
        default_config,
        build,
    });
}
"#;

const CONFIG_RS: &str = r#"//! The `{{name}}` method config (`method_config` of a run), with its defaults.
use selfsup_data::pipeline::{CIFAR10_MEAN, CIFAR10_STD};
use serde::{Deserialize, Serialize};

/// Everything the method's behaviour depends on; every field has a documented default, and a
/// run saves the whole config beside itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct {{Type}}Config {
    /// Per-channel mean of the input normalisation (pixels in `[0, 1]`). Default: CIFAR-10's.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of the input normalisation. Default: CIFAR-10's.
    pub std: Vec<f32>,
    /// Random horizontal flips of the training images. Default true.
    pub horizontal_flip: bool,
}

impl Default for {{Type}}Config {
    fn default() -> Self {
        {{Type}}Config {
            mean: CIFAR10_MEAN.to_vec(),
            std: CIFAR10_STD.to_vec(),
            horizontal_flip: true,
        }
    }
}

impl {{Type}}Config {
    /// Checks the values against images of `channels` channels, naming the first at fault.
    pub fn check(&self, channels: usize) -> Result<(), String> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(format!(
                "mean has {} and std {} entries, but the images have {channels} channels",
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some(s) = self.std.iter().find(|s| s.is_nan() || **s <= 0.0) {
            return Err(format!("std entry {s} is not positive"));
        }
        Ok(())
    }
}
"#;

const METHOD_RS: &str = r#"//! The `{{name}}` method: the encoder on each image and on its upside-down copy, globally
//! pooled, and a linear head telling the two apart (replace with the method's own task).
use crate::config::{{Type}}Config;
use selfsup_core::encoders::{try_build_encoder, Encoder};
use selfsup_core::method::single_view;
use selfsup_core::{BuildContext, CoreError, PretextMethod, StepOutput};
use selfsup_data::{Batch, Op, Pipeline};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The method: the encoder (under `encoder`, where checkpoints and probes find it) and its
/// head (under `head`).
#[derive(Debug)]
pub struct {{Type}} {
    encoder: Box<dyn Encoder>,
    head: nn::Linear,
    cfg: {{Type}}Config,
}

impl {{Type}} {
    /// Builds the encoder of the run config on `root / "encoder"` and the head on
    /// `root / "head"`.
    ///
    /// # Errors
    /// A config that does not fit the images, or an encoder that cannot be built.
    pub fn new(root: &nn::Path, cfg: {{Type}}Config, ctx: &BuildContext) -> selfsup_core::Result<Self> {
        cfg.check(ctx.image_channels as usize)
            .map_err(|e| CoreError::Config(format!("{{name}} method_config: {e}")))?;
        let encoder = try_build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels)?;
        let head = nn::linear(root / "head", encoder.out_channels(), 2, Default::default());
        Ok({{Type}} { encoder, head, cfg })
    }

    /// Scores of "upright" and "upside down".
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)` normalised images; returns `(N, 2)`.
    pub fn logits_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let feats = self.encoder.forward_t(xs, train);
        self.head.forward(&feats.mean_dim([2i64, 3].as_slice(), false, Kind::Float))
    }
}

impl PretextMethod for {{Type}} {
    fn name(&self) -> &str {
        "{{name}}"
    }

    fn views(&self) -> Vec<Pipeline> {
        let mut ops = Vec::new();
        if self.cfg.horizontal_flip {
            ops.push(Op::HorizontalFlip { p: 0.5 });
        }
        ops.push(Op::Normalize { mean: self.cfg.mean.clone(), std: self.cfg.std.clone() });
        vec![Pipeline { ops }]
    }

    fn encoder(&self) -> &dyn Encoder {
        &*self.encoder
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let x = single_view(batch, "{{name}}")?;
        let n = x.size()[0];
        // Each image upright (label 0) and upside down (label 1), in one batch.
        let inputs = Tensor::cat(&[x.shallow_clone(), x.flip([2])], 0);
        let labels = Tensor::cat(
            &[
                Tensor::zeros([n], (Kind::Int64, x.device())),
                Tensor::ones([n], (Kind::Int64, x.device())),
            ],
            0,
        );
        let logits = self.logits_t(&inputs, train);
        let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(&labels);
        let acc = logits.argmax(-1, false).eq_tensor(&labels).to_kind(Kind::Float).mean(Kind::Float);
        Ok(StepOutput {
            loss,
            metrics: vec![("upright_acc".to_string(), acc)],
            inputs: 2 * n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_core::encoders::EncoderConfig;
    use tch::nn::OptimizerConfig;
    use tch::Device;

    fn ctx() -> BuildContext {
        BuildContext {
            device: Device::Cpu,
            seed: 0,
            num_train_images: 8,
            image_channels: 3,
            image_size: 32,
            encoder: EncoderConfig::Tiny { width: 8, batch_norm: true },
            group: None,
        }
    }

    /// Smooth images, the same whatever other tests do (no draw from libtorch's global
    /// generator, which parallel tests share).
    fn images(n: i64) -> Tensor {
        let x = (Tensor::arange(n * 3 * 8 * 8, (Kind::Float, Device::Cpu)) * 0.37).sin();
        x.view([n, 3, 8, 8]).upsample_bilinear2d([32, 32], false, None, None)
    }

    #[test]
    fn builds_through_the_registry_and_names_bad_configs() {
        let mut r = selfsup_core::Registry::new();
        crate::register(&mut r);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = r.build("{{name}}", &vs.root(), &serde_json::json!({}), &ctx()).unwrap();
        assert_eq!(m.name(), "{{name}}");
        assert!(vs.variables().keys().any(|k| k.starts_with("encoder.")));
        let err = r.build("{{name}}", &vs.root(), &serde_json::json!({"mean": [0.5]}), &ctx());
        assert!(err.err().unwrap().to_string().contains("mean has 1"));
        let err = r.build("{{name}}", &vs.root(), &serde_json::json!({"typo": 1}), &ctx());
        assert!(err.err().unwrap().to_string().contains("unknown field `typo`"));
    }

    #[test]
    fn the_loss_falls_in_a_few_steps_on_a_fixed_batch() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = {{Type}}::new(&vs.root(), {{Type}}Config::default(), &ctx()).unwrap();
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let batch = Batch::unlabeled(images(8));
        let mut losses = Vec::new();
        for _ in 0..30 {
            let out = m.step(&batch, true).unwrap();
            losses.push(out.loss.double_value(&[]));
            opt.backward_step(&out.loss);
        }
        assert!(losses[29] < 0.5 * losses[0], "{losses:?}");
        let out = m.step(&batch, false).unwrap();
        assert_eq!(out.inputs, 16);
        assert_eq!(out.metrics[0].0, "upright_acc");
    }
}
"#;

/// Inserts `line` before the first line of `text` that contains `anchor` (keeping that line's
/// indentation when `line` has none).
fn insert_before(text: &str, anchor: &str, line: &str, what: &Path) -> Result<String> {
    let Some(at) = text.find(anchor) else {
        bail!("{}: no `{anchor}` to insert `{line}` before", what.display());
    };
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let indent: String = text[start..].chars().take_while(|c| *c == ' ').collect();
    Ok(format!("{}{indent}{line}\n{}", &text[..start], &text[start..]))
}

fn edit(path: &Path, f: impl FnOnce(&str) -> Result<String>) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let new = f(&text)?;
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// Scaffolds method `name` into the workspace at `root`; returns the files written or edited.
pub fn scaffold(root: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let n = Names::new(name)?;
    let dir = root.join("crates").join(&n.name);
    if dir.exists() {
        bail!("{} exists: pick another name", dir.display());
    }
    let cargo = root.join("Cargo.toml");
    let workspace = std::fs::read_to_string(&cargo)?;
    if workspace.contains(&format!("\n{} ", n.krate)) {
        bail!("{} already names a crate `{}`", cargo.display(), n.krate);
    }
    let methods_toml = root.join("crates/methods/Cargo.toml");
    let methods_lib = root.join("crates/methods/src/lib.rs");
    for p in [&methods_toml, &methods_lib] {
        if !p.exists() {
            bail!("{} is missing: is {} the selfsup workspace?", p.display(), root.display());
        }
    }
    let mut written = Vec::new();
    for (rel, template) in [
        ("Cargo.toml", CARGO_TOML),
        ("src/lib.rs", LIB_RS),
        ("src/config.rs", CONFIG_RS),
        ("src/method.rs", METHOD_RS),
    ] {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("a file in the crate"))?;
        std::fs::write(&path, n.fill(template))
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    // The workspace's dependency table (crates/* are members already).
    edit(&cargo, |t| {
        insert_before(
            t,
            "selfsup-methods = {",
            &format!("{} = {{ path = \"crates/{}\" }}", n.krate, n.name),
            &cargo,
        )
    })?;
    // The registry: before the supervised baseline, which stays last.
    edit(&methods_toml, |t| {
        insert_before(
            t,
            "selfsup-supervised.workspace",
            &format!("{}.workspace = true", n.krate),
            &methods_toml,
        )
    })?;
    edit(&methods_lib, |t| {
        let t = insert_before(
            t,
            "selfsup_supervised::register(&mut r);",
            &format!("{}::register(&mut r);", n.ident),
            &methods_lib,
        )?;
        // The registry test's list: the last `"supervised"` is its final entry.
        let Some(at) = t.rfind("\"supervised\"") else {
            bail!("{}: no \"supervised\" entry in the registry test", methods_lib.display());
        };
        Ok(format!("{}\"{}\",\n                {}", &t[..at], n.name, &t[at..]))
    })?;
    written.extend([cargo, methods_toml, methods_lib]);
    Ok(written)
}

pub(crate) const USAGE: &str =
    "usage: cargo xtask new-method NAME (lowercase, hyphens: `upside-down`)";

/// `cargo xtask new-method NAME`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let [name] = args else {
        bail!("{USAGE}");
    };
    let files = scaffold(root, name)?;
    for f in &files {
        println!("wrote {}", f.strip_prefix(root).unwrap_or(f).display());
    }
    let fmt = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["fmt", "--all"])
        .current_dir(root)
        .status();
    if !matches!(fmt, Ok(s) if s.success()) {
        println!("(cargo fmt did not run: format the new crate before committing)");
    }
    println!(
        "\nNext: `cargo xtask test`, then replace the skeleton's step in crates/{name}/src/method.rs \
         (CONTRIBUTING.md walks through it); `selfsup reproduce zoo --methods {name}` adds its row."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_derived() {
        let n = Names::new("upside-down").unwrap();
        assert_eq!(
            (n.krate.as_str(), n.ident.as_str(), n.ty.as_str()),
            ("selfsup-upside-down", "selfsup_upside_down", "UpsideDown")
        );
        for bad in ["Upside", "2way", "a--b", "a-", "a_b", ""] {
            assert!(Names::new(bad).is_err(), "{bad}");
        }
    }

    /// Every file under `dir` but the build and run outputs, relative to `root`.
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if ["target", ".git", "runs", "results"].iter().any(|x| rel == Path::new(x)) {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }

    /// The source files of the workspace (git's tracked and unignored files; every file but
    /// the build and run outputs where git is not at hand), copied to `to`.
    fn copy_workspace(root: &Path, to: &Path) {
        let git = std::process::Command::new("git")
            .args(["ls-files", "-co", "--exclude-standard", "-z"])
            .current_dir(root)
            .output();
        let files: Vec<PathBuf> = match git {
            Ok(out) if out.status.success() => out
                .stdout
                .split(|b| *b == 0)
                .filter(|r| !r.is_empty())
                .map(|r| PathBuf::from(std::str::from_utf8(r).unwrap()))
                .collect(),
            _ => {
                let mut v = Vec::new();
                walk(root, root, &mut v);
                v
            }
        };
        for rel in &files {
            let rel = rel.as_path();
            // Results are not code (datasets/ holds the manifest the data crate embeds).
            if rel.starts_with("results") {
                continue;
            }
            let (src, dst) = (root.join(rel), to.join(rel));
            if !src.is_file() {
                continue;
            }
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(&src, &dst).unwrap();
        }
    }

    #[test]
    fn a_scaffolded_method_builds_registers_and_trains_in_a_copy_of_the_workspace() {
        let root = crate::project_root();
        let Ok(libtorch) = std::env::var("LIBTORCH") else {
            panic!("LIBTORCH is not set: run the suite with `cargo xtask test`");
        };
        let tmp = tempfile::tempdir().unwrap();
        copy_workspace(&root, tmp.path());
        let files = scaffold(tmp.path(), "upside-down").unwrap();
        assert_eq!(files.len(), 7);
        assert!(scaffold(tmp.path(), "upside-down").unwrap_err().to_string().contains("exists"));
        let lib = std::fs::read_to_string(tmp.path().join("crates/methods/src/lib.rs")).unwrap();
        let reg = lib.find("selfsup_upside_down::register").unwrap();
        assert!(reg < lib.find("selfsup_supervised::register").unwrap());
        // Build it, run its tests and the registry's (which lists it), with a target folder of
        // its own inside this checkout's (kept between runs, so a re-run only rebuilds the copy).
        let target = root.join("target").join("scaffold-test");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for args in [
            // As `cargo xtask new-method` does after writing the files.
            vec!["fmt", "--all"],
            vec![
                "clippy",
                "--offline",
                "-p",
                "selfsup-upside-down",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            vec!["test", "--offline", "-p", "selfsup-upside-down", "-p", "selfsup-methods"],
        ] {
            let out = std::process::Command::new(&cargo)
                .args(&args)
                .current_dir(tmp.path())
                .env("CARGO_TARGET_DIR", &target)
                .env("LIBTORCH", &libtorch)
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "cargo {args:?} failed:\n{log}");
            if args[0] == "test" {
                assert!(
                    log.contains("the_loss_falls_in_a_few_steps_on_a_fixed_batch ... ok"),
                    "{log}"
                );
                assert!(log.contains("every_method_once_in_table_order ... ok"), "{log}");
            }
        }
    }
}
