//! The catalogue of reproduction plans: each paper table a function from a profile to a
//! [`Plan`], run by the engine.
//!
//! The plans live here, together, rather than in the method crates: a plan compares several
//! methods (RotNet's needs the supervised baseline, the zoo table every method), so it belongs
//! to no single method crate; and the method crates stay free of the evaluation and engine
//! dependencies a plan needs. A plan is declarations only (trainings, encoders, probes, the
//! report); a new one is a module here and a line in [`catalogue`] (see `CONTRIBUTING.md`).
use crate::engine::Plan;
use anyhow::{bail, Result};
use std::path::PathBuf;

pub mod contrastive;
pub mod layerwise;
pub mod patches;
pub mod reconstruction;
pub mod rotnet;
pub mod zoo;

/// What a plan is built from: the command line's choices.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The plan's name (`rotnet`, `simclr`, ...).
    pub name: String,
    /// The profile (`smoke`, `cpu`, `paper`).
    pub profile: String,
    /// `--set PROFILE_KEY=VALUE` overrides of the profile, in order.
    pub sets: Vec<String>,
    /// The dataset spec.
    pub dataset: String,
    /// Its folder (recorded in the run configs).
    pub data_dir: PathBuf,
    /// The device's name (`cpu`, `cuda:0`; recorded in the run configs).
    pub device: String,
    /// The methods of the registry the plan runs with, in table order (the zoo's default
    /// list); empty where unknown.
    pub registered: Vec<String>,
}

#[cfg(test)]
impl PlanInput {
    /// The input of plan `name` under `profile` with the `--set` overrides `sets`, on CIFAR-10
    /// in `datasets/`, on the CPU, without a registry (the plans' unit tests).
    pub(crate) fn for_test(name: &str, profile: &str, sets: &[&str]) -> PlanInput {
        PlanInput {
            name: name.into(),
            profile: profile.into(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
            dataset: "cifar10".into(),
            data_dir: "datasets".into(),
            device: "cpu".into(),
            registered: Vec::new(),
        }
    }
}

/// A reproduction in the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// `selfsup reproduce <name>`.
    pub name: &'static str,
    /// The paper it reproduces.
    pub about: &'static str,
    /// Builds its plan.
    pub build: fn(&PlanInput) -> Result<Plan>,
}

/// Every reproduction, in table order.
pub fn catalogue() -> Vec<Entry> {
    let contrastive = |name, about| Entry { name, about, build: contrastive::plan };
    vec![
        Entry {
            name: "rotnet",
            about: "Gidaris et al. 2018, CIFAR-10 Tables 1-3 and the few-label table",
            build: rotnet::plan,
        },
        contrastive("simclr", "Chen et al. 2020, CIFAR-10 kNN and linear evaluation"),
        contrastive("moco", "He et al. 2020, the official CIFAR-10 demo"),
        contrastive("instance-discrimination", "Wu et al. 2018, lemniscate's CIFAR-10 recipe"),
        Entry {
            name: "relative-patch",
            about: "Doersch et al. 2015, conv1-conv5 linear probes against the seed's table",
            build: patches::plan,
        },
        Entry {
            name: "jigsaw",
            about: "Noroozi & Favaro 2016, conv1-conv5 linear probes against the seed's table",
            build: patches::plan,
        },
        Entry {
            name: "cpc",
            about: "van den Oord et al. 2018 (CPC v2 patches), conv1-conv5 linear probes",
            build: patches::plan,
        },
        Entry {
            name: "autoencoder",
            about: "Vincent et al. 2008 (denoising), conv1-conv5 linear probes",
            build: reconstruction::plan,
        },
        Entry {
            name: "context-encoder",
            about: "Pathak et al. 2016, conv1-conv5 linear probes, losses and masks compared",
            build: reconstruction::plan,
        },
        Entry {
            name: "colorization",
            about: "Zhang et al. 2016, conv1-conv5 linear probes against the seed's table",
            build: reconstruction::plan,
        },
        Entry {
            name: "split-brain",
            about: "Zhang et al. 2017, conv1-conv5 linear probes, halves and losses compared",
            build: reconstruction::plan,
        },
        Entry {
            name: "zoo",
            about: "every method on one trunk under one protocol: the seed's layer-wise table",
            build: zoo::plan,
        },
    ]
}

/// The reproduction called `name`.
pub fn find(name: &str) -> Result<Entry> {
    let all = catalogue();
    match all.iter().find(|e| e.name == name) {
        Some(e) => Ok(*e),
        None => bail!(
            "no reproduction is registered for `{name}` (known: {})",
            all.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `profile`'s serialised value with the `key=value` overrides of `sets` applied (the
/// profiles' `--set`), deserialised back.
pub fn apply_sets<T>(profile: T, sets: &[String]) -> Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    if sets.is_empty() {
        return Ok(profile);
    }
    let mut v = serde_json::to_value(&profile)?;
    for s in sets {
        selfsup_core::config::apply_override(&mut v, s)?;
    }
    Ok(selfsup_core::config::from_value(&v, "profile")?)
}

/// SGD with `momentum` (no Nesterov) and L2 `weight_decay`, as the public recipes the profiles
/// follow.
pub fn sgd(lr: f64, momentum: f64, weight_decay: f64) -> selfsup_core::optim::OptimizerConfig {
    selfsup_core::optim::OptimizerConfig::Sgd {
        lr,
        momentum,
        nesterov: false,
        weight_decay,
        exclude_bias_and_norm: false,
    }
}

/// Cosine decay to zero over the run, no warm-up.
pub fn cosine() -> selfsup_core::schedule::ScheduleConfig {
    selfsup_core::schedule::ScheduleConfig::Cosine { warmup_epochs: 0.0, final_fraction: 0.0 }
}

/// What the single-trunk plans (patch grids, reconstruction) fix of every training: a run
/// config is these with a method, its config, epochs and optimizer.
#[derive(Debug, Clone)]
pub struct Trainings<'a> {
    /// The trunk.
    pub encoder: &'a selfsup_core::EncoderConfig,
    /// Training images (a seeded subset); `None` = all.
    pub train_images: Option<usize>,
    /// Images per step.
    pub batch_size: usize,
    /// The pretrainings' schedule (the supervised trunk's is cosine).
    pub schedule: &'a selfsup_core::schedule::ScheduleConfig,
    /// Bit-for-bit CPU determinism.
    pub deterministic: bool,
    /// Run seed.
    pub seed: u64,
    /// Metrics line every this many steps.
    pub log_every: u64,
}

impl Trainings<'_> {
    /// The run config of `method` with `method_config` for `epochs` under `optimizer`, on the
    /// input's dataset and device, checkpointed every epoch.
    pub fn config(
        &self,
        method: &str,
        method_config: serde_json::Value,
        epochs: u64,
        optimizer: selfsup_core::optim::OptimizerConfig,
        input: &PlanInput,
    ) -> selfsup_core::config::RunConfig {
        use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
        RunConfig {
            method: method.into(),
            seed: self.seed,
            device: input.device.clone(),
            data: DataConfig {
                dataset: input.dataset.clone(),
                split: selfsup_data::Split::Train,
                data_dir: Some(input.data_dir.clone()),
                max_images: self.train_images,
            },
            encoder: self.encoder.clone(),
            train: TrainConfig {
                epochs,
                batch_size: self.batch_size,
                optimizer,
                schedule: if method == "supervised" { cosine() } else { self.schedule.clone() },
                checkpoint_every: 1,
                log_every: self.log_every,
                deterministic: self.deterministic,
                ..TrainConfig::default()
            },
            method_config,
        }
    }
}
