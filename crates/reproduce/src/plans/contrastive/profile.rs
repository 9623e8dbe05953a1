//! The three profiles of the contrastive reproductions (see the plans' docs): `paper` (the public
//! CIFAR-10 recipes, a GPU job), `cpu` (trained against random init on two CPU cores) and
//! `smoke` (seconds).
use super::METHODS;
use crate::plans::cosine;
use anyhow::{bail, Result};
use selfsup_contrastive::views;
use selfsup_core::config::{DataConfig, RunConfig, TrainConfig};
use selfsup_core::optim::OptimizerConfig;
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::EncoderConfig;
use selfsup_data::Split;
use selfsup_eval::features::Normalization;
use selfsup_eval::{KnnConfig, LinearProbeConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;

/// A published figure to compare with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Where it comes from.
    pub source: String,
    /// `knn` or `linear`.
    pub protocol: String,
    /// Top-1 test accuracy, percent.
    pub top1: f64,
    /// Pretraining epochs behind it.
    pub epochs: u64,
}

/// Everything a profile fixes (overridable with `--set key=value`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `smoke`, `cpu` or `paper`.
    pub name: String,
    /// One line for the log.
    pub summary: String,
    /// The encoder pretrained and probed.
    pub encoder: EncoderConfig,
    /// Pretraining images (a seeded subset); `null` = all.
    pub train_images: Option<usize>,
    /// Pretraining epochs.
    pub epochs: u64,
    /// Pretraining batch size.
    pub batch_size: usize,
    /// Pretraining optimizer.
    pub optimizer: OptimizerConfig,
    /// Pretraining schedule.
    pub schedule: ScheduleConfig,
    /// The method's config.
    pub method_config: Value,
    /// Labeled training images of the probes; `null` = all.
    pub probe_train_images: Option<usize>,
    /// Test images; `null` = all.
    pub test_images: Option<usize>,
    /// The kNN probe (k = 200, T = 0.1), on the pooled backbone (solo-learn, lightly) and, as a
    /// second column, on the method's L2-normalised head embedding (MoCo's CIFAR demo,
    /// lemniscate).
    pub knn: KnnConfig,
    /// The linear probe of the papers and solo-learn: the globally pooled last feature map,
    /// trained on random-resized crops and flips (the headline linear column).
    pub linear: LinearProbeConfig,
    /// The second linear column: the last feature map pooled to about 9,000 dimensions,
    /// standardised, unaugmented (the classic pretext tasks' protocol).
    pub linear_map: LinearProbeConfig,
    /// Probe seeds: each draws its own labeled subset and the probes' random choices; the
    /// table gives mean ± standard deviation over them.
    pub probe_seeds: Vec<u64>,
    /// Published figures for the same setting.
    pub references: Vec<Reference>,
    /// Bit-for-bit CPU determinism across thread counts (oneDNN off but for the
    /// convolutions, on fixed pieces of the batch; see `selfsup_core::determinism`).
    pub deterministic: bool,
    /// Run seed.
    pub seed: u64,
    /// Metrics line every this many steps.
    pub log_every: u64,
}

/// SGD with momentum 0.9 (no Nesterov), as the contrastive recipes.
fn sgd(lr: f64, weight_decay: f64) -> OptimizerConfig {
    crate::plans::sgd(lr, 0.9, weight_decay)
}

fn knn(max_train: Option<usize>) -> KnnConfig {
    KnnConfig {
        k: 200,
        temperature: 0.1,
        max_train,
        normalization: Some(Normalization::cifar10()),
        ..KnnConfig::default()
    }
}

/// The reference linear protocol ([`LinearProbeConfig::reference_contrastive`]) and the
/// pooled-map one, each for `epochs` epochs at `batch_size`, cosine schedule.
fn linear(epochs: usize, batch_size: usize) -> (LinearProbeConfig, LinearProbeConfig) {
    let reference = LinearProbeConfig {
        epochs,
        batch_size,
        schedule: cosine(),
        normalization: Some(Normalization::cifar10()),
        ..LinearProbeConfig::reference_contrastive()
    };
    let map = LinearProbeConfig {
        taps: vec!["last".into()],
        epochs,
        batch_size,
        schedule: cosine(),
        normalization: Some(Normalization::cifar10()),
        ..LinearProbeConfig::default()
    };
    (reference, map)
}

impl Profile {
    /// The profile `name` of `method`, with `--set` overrides applied.
    pub fn resolve(method: &str, name: &str, sets: &[String]) -> Result<Profile> {
        let base = match name {
            "paper" => Self::paper(method)?,
            "cpu" => Self::cpu(method)?,
            "smoke" => Self::smoke(method)?,
            other => bail!("unknown profile `{other}` (known: smoke, cpu, paper)"),
        };
        crate::plans::apply_sets(base, sets)
    }

    fn method_defaults(method: &str) -> Result<Value> {
        Ok(match method {
            "simclr" => serde_json::to_value(selfsup_simclr::SimClrConfig::default())?,
            "moco" => serde_json::to_value(selfsup_moco::MocoConfig::cifar_demo())?,
            "instance-discrimination" => {
                serde_json::to_value(selfsup_instance_discrimination::InstDiscConfig::default())?
            }
            other => {
                bail!("no contrastive reproduction for `{other}` (known: {})", METHODS.join(", "))
            }
        })
    }

    /// The method config of the cpu profile: the defaults, except for instance discrimination,
    /// which with this NIN needs three changes to learn in the time (all measured here on 2
    /// cores, width 32, SGD 0.06 cosine, batch 128; kNN of the `--knn-every` monitor, whose
    /// random-init figure is about 27%):
    /// - the full non-parametric softmax (paper eq. 2; 10,000 bank rows make it cheap) instead
    ///   of NCE with K = 4,096, which diverged: the epoch loss rose from 91 to 352 over three
    ///   epochs on 25,000 images, and from 113 to 3,416 over 12 epochs on 5,000 images even
    ///   with the head's batch norm, kNN falling to 19%. With the bank frozen the NCE loss holds
    ///   steady (the divergence comes from the bank updates feeding back);
    /// - τ = 0.1, lemniscate's CIFAR value (`cifar.py`), as the paper profile;
    /// - batch norm on the 128-d head output before normalisation (`head_bn`): the NIN's pooled
    ///   post-ReLU features share one large direction at init, so the first epochs' bank rows
    ///   all point the same way (epoch-1 loss 11.5 against ln 5,000 = 8.5). On 5,000 images ×
    ///   20 epochs it reached loss 6.81 and kNN 30.99% with it, 7.44 and 26.72% without.
    ///
    /// Without the first and last changes the softmax on 25,000 images stayed at 14.8, 15.5,
    /// 15.1 for three epochs (ln 25,000 = 10.1). With all three, 10,000 images × 40 epochs
    /// reached instance accuracy 26% and monitor kNN 26.85, 34.06, 37.79, 38.79% at epochs 10,
    /// 20, 30, 40; the profile's own kNN probe gives 38.61% against 27.40% for random init.
    fn cpu_method_config(method: &str) -> Result<Value> {
        let mut c = Self::method_defaults(method)?;
        if method == "instance-discrimination" {
            c["objective"] = json!("softmax");
            c["temperature"] = json!(0.1);
            c["head_bn"] = json!(true);
        }
        Ok(c)
    }

    /// The public CIFAR-10 recipes (see the module docs).
    pub fn paper(method: &str) -> Result<Profile> {
        let mut method_config = Self::method_defaults(method)?;
        let mut schedule = cosine();
        if method == "instance-discrimination" {
            // lemniscate's current `cifar.py` and README (`--nce-k 0 --nce-t 0.1 --lr 0.03`):
            // the full softmax, τ = 0.1, rate ×0.1 at epochs 120 and 160, no horizontal flip
            // (commented out of its `transform_train`), and its normalisation (std 0.2023,
            // 0.1994, 0.2010). Its grayscale comes before the colour jitter, ours after.
            method_config["objective"] = json!("softmax");
            method_config["temperature"] = json!(0.1);
            let mut view = views::mocov1_view(3, 32);
            view.ops.retain(|op| !matches!(op, selfsup_data::Op::HorizontalFlip { .. }));
            for op in view.ops.iter_mut() {
                if let selfsup_data::Op::Normalize { std, .. } = op {
                    *std = vec![0.2023, 0.1994, 0.2010];
                }
            }
            method_config["view"] = serde_json::to_value(view)?;
            schedule = ScheduleConfig::Steps { milestones: vec![120, 160], gamma: 0.1 };
        }
        let (batch_size, optimizer, references) = match method {
            "simclr" => (
                512,
                sgd(0.06 * 512.0 / 128.0, 5e-4),
                vec![
                    Reference {
                        source: "lightly CIFAR-10 benchmark (ResNet-18, batch 512)".into(),
                        protocol: "knn".into(),
                        top1: 84.8,
                        epochs: 200,
                    },
                    Reference {
                        source: "solo-learn CIFAR-10 (ResNet-18, LARS, 1000 epochs)".into(),
                        protocol: "linear".into(),
                        top1: 90.74,
                        epochs: 1000,
                    },
                ],
            ),
            "moco" => (
                512,
                sgd(0.06, 5e-4),
                vec![
                    Reference {
                        source: "official MoCo CIFAR-10 demo (ResNet-18, symmetric loss)".into(),
                        protocol: "knn".into(),
                        top1: 85.3,
                        epochs: 200,
                    },
                    Reference {
                        source: "lightly CIFAR-10 benchmark (ResNet-18, batch 512)".into(),
                        protocol: "knn".into(),
                        top1: 84.7,
                        epochs: 200,
                    },
                    Reference {
                        source: "solo-learn CIFAR-10 MoCo v2+ (ResNet-18, 1000 epochs)".into(),
                        protocol: "linear".into(),
                        top1: 92.94,
                        epochs: 1000,
                    },
                ],
            ),
            _ => (128, sgd(0.03, 5e-4), Vec::new()),
        };
        let (linear, linear_map) = linear(100, 256);
        Ok(Profile {
            name: "paper".into(),
            summary: "the public CIFAR-10 recipe with a CIFAR-stem ResNet-18 (a GPU job)".into(),
            encoder: EncoderConfig::Resnet18 { stem: selfsup_core::encoders::ResnetStem::Cifar },
            train_images: None,
            epochs: 200,
            batch_size,
            optimizer,
            schedule,
            method_config,
            probe_train_images: None,
            test_images: None,
            knn: knn(None),
            linear,
            linear_map,
            probe_seeds: vec![0],
            references,
            deterministic: true,
            seed: 0,
            log_every: 50,
        })
    }

    /// Trained vs random init on two CPU cores in 10 to 20 minutes a method (timings in the
    /// module docs; not run by the test suite). oneDNN convolutions stay on (`deterministic =
    /// false`): a run is reproducible at the same thread count, which its config records.
    pub fn cpu(method: &str) -> Result<Profile> {
        // Instance discrimination refreshes a bank row once an epoch, so it gets fewer images
        // seen more often (see `cpu_method_config`): 655 s with its probes, measured.
        let (train_images, epochs) = match method {
            "instance-discrimination" => (10_000, 40),
            _ => (25_000, 10),
        };
        let (linear, linear_map) = linear(15, 256);
        Ok(Profile {
            name: "cpu".into(),
            summary: "trained vs random init on 2 CPU cores (10 to 20 min a method)".into(),
            encoder: EncoderConfig::Nin { blocks: 4, width: 32 },
            train_images: Some(train_images),
            epochs,
            batch_size: 128,
            optimizer: sgd(0.06, 5e-4),
            schedule: cosine(),
            method_config: Self::cpu_method_config(method)?,
            probe_train_images: Some(10_000),
            test_images: None,
            knn: knn(None),
            linear,
            linear_map,
            probe_seeds: vec![0, 1, 2],
            references: Vec::new(),
            deterministic: false,
            seed: 0,
            log_every: 10,
        })
    }

    /// A pipeline check in seconds.
    pub fn smoke(method: &str) -> Result<Profile> {
        let mut method_config = Self::method_defaults(method)?;
        match method {
            "moco" => method_config["queue_size"] = json!(64),
            "instance-discrimination" => method_config["nce_k"] = json!(32),
            _ => {}
        }
        let (linear, linear_map) = linear(1, 64);
        Ok(Profile {
            name: "smoke".into(),
            summary: "pipeline check in seconds (numbers mean nothing)".into(),
            encoder: EncoderConfig::Tiny { width: 8, batch_norm: true },
            train_images: Some(256),
            epochs: 1,
            batch_size: 32,
            optimizer: sgd(0.06, 5e-4),
            schedule: cosine(),
            method_config,
            probe_train_images: Some(256),
            test_images: Some(128),
            knn: knn(None),
            linear,
            linear_map,
            probe_seeds: vec![0, 1],
            references: Vec::new(),
            deterministic: true,
            seed: 0,
            log_every: 1,
        })
    }
}

impl Profile {
    /// The pretraining run config of `method` under this profile.
    pub fn run_config(
        &self,
        method: &str,
        dataset: &str,
        data_dir: &Path,
        device: &str,
    ) -> RunConfig {
        let p = self;
        RunConfig {
            method: method.into(),
            seed: p.seed,
            device: device.into(),
            data: DataConfig {
                dataset: dataset.into(),
                split: Split::Train,
                data_dir: Some(data_dir.to_path_buf()),
                max_images: p.train_images,
            },
            encoder: p.encoder.clone(),
            train: TrainConfig {
                epochs: p.epochs,
                batch_size: p.batch_size,
                optimizer: p.optimizer.clone(),
                schedule: p.schedule.clone(),
                checkpoint_every: 1,
                log_every: p.log_every,
                deterministic: p.deterministic,
                ..TrainConfig::default()
            },
            method_config: p.method_config.clone(),
        }
    }
}
