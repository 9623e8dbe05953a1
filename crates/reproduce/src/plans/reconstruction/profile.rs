//! The three profiles of the reconstruction and cross-channel reproductions (see the plans'
//! docs): `paper` (each paper's ImageNet protocol with the Caffe AlexNet, a GPU job on an image
//! folder the user supplies), `cpu` (trained against random init and the supervised AlexNet on
//! CIFAR-10, about half an hour a method on two CPU cores) and `smoke` (seconds).
use super::METHODS;
use crate::plans::layerwise::{knn, linear};
use crate::plans::patches::{imagenet_references, ReferenceRow};
use crate::plans::{cosine, sgd};
use anyhow::{bail, Result};
use selfsup_core::encoders::AlexnetVariant;
use selfsup_core::optim::OptimizerConfig;
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::EncoderConfig;
use selfsup_eval::{KnnConfig, LinearProbeConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One pretraining of the plan: the method with `overrides` merged over the profile's
/// `method_config`. The first is the method as the paper evaluates it (`pretrain`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// The training's name (its run folder and encoder).
    pub training: String,
    /// Its row in the table.
    pub label: String,
    /// Merged over `method_config`.
    pub overrides: Value,
    /// The last-epoch metric shown as its pretext figure (`ab_acc`, `rec_loss`, `loss`).
    pub metric: String,
    /// Factor of that metric in the table (100 for an accuracy).
    pub scale: f64,
}

/// A second encoder over a variant's weights: the method rebuilt with `view` merged over its
/// config (split-brain's `features`), probed like the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// The encoder's name.
    pub encoder: String,
    /// Its row in the table.
    pub label: String,
    /// The variant whose checkpoint it reads.
    pub training: String,
    /// Merged over that variant's method config; must not change its variables.
    pub view: Value,
}

/// A comparison the paper makes, as a finding: `a` ahead of `b` at `a`'s best layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// The encoder expected ahead.
    pub a: String,
    /// The other.
    pub b: String,
    /// The claim, in words.
    pub claim: String,
    /// What the paper found.
    pub paper: String,
}

/// A published single-number result (PASCAL VOC 2007 classification, mAP %).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PascalRow {
    /// The row's label.
    pub label: String,
    /// mAP (%).
    pub map: f64,
}

/// Everything a profile fixes (overridable with `--set key=value`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `smoke`, `cpu` or `paper`.
    pub name: String,
    /// One line for the log.
    pub summary: String,
    /// The trunk: pretrained by the method, trained with labels for the supervised row and
    /// probed at its taps `conv1..conv5`.
    pub encoder: EncoderConfig,
    /// Pretraining images (a seeded subset); `null` = all.
    pub train_images: Option<usize>,
    /// Pretraining epochs (every variant alike).
    pub epochs: u64,
    /// Images per pretraining step.
    pub batch_size: usize,
    /// Pretraining optimizer (the context encoder's discriminator has its own, in its config).
    pub optimizer: OptimizerConfig,
    /// Pretraining schedule.
    pub schedule: ScheduleConfig,
    /// The method's config: its crate's defaults with this profile's choices.
    pub method_config: Value,
    /// The pretrainings, the first the method as the paper evaluates it.
    pub variants: Vec<Variant>,
    /// Further encoders over the variants' weights (split-brain's halves alone).
    pub views: Vec<View>,
    /// The paper's comparisons between variants and views, as findings.
    pub comparisons: Vec<Comparison>,
    /// Epochs of the supervised trunk (labels of the same images).
    pub supervised_epochs: u64,
    /// The supervised method's config.
    pub supervised_config: Value,
    /// Its optimizer (its schedule is cosine).
    pub supervised_optimizer: OptimizerConfig,
    /// Labeled training images of the probes (a seeded subset per probe seed); `null` = all.
    pub probe_train_images: Option<usize>,
    /// Test images scored (a seeded subset); `null` = all.
    pub test_images: Option<usize>,
    /// The layer-wise linear probe: every tap average-pooled to about 9,000 dimensions,
    /// standardised (Zhang et al.'s protocol behind the seed's ImageNet table).
    pub linear: LinearProbeConfig,
    /// Weighted kNN on the last tap, globally pooled.
    pub knn: KnnConfig,
    /// Probe seeds: each draws its own labeled subset; the table gives mean ± std over them.
    pub probe_seeds: Vec<u64>,
    /// The seed's ImageNet rows shown beside ours (another dataset: marked as such).
    pub references: Vec<ReferenceRow>,
    /// The seed's PASCAL VOC 2007 classification figures, where it gives them.
    pub pascal: Vec<PascalRow>,
    /// Bit-for-bit CPU determinism across thread counts (oneDNN off but for the
    /// convolutions, on fixed pieces of the batch; see `selfsup_core::determinism`).
    pub deterministic: bool,
    /// Run seed.
    pub seed: u64,
    /// Metrics line every this many steps.
    pub log_every: u64,
}

/// The seed's ImageNet rows for `method`, then ImageNet labels and random init.
pub fn references(method: &str) -> Vec<ReferenceRow> {
    let row =
        |label: &str, top1| ReferenceRow { label: label.into(), dataset: "ImageNet".into(), top1 };
    let mut rows = match method {
        "context-encoder" => {
            vec![row("Context encoder (Pathak et al. 2016)", [14.1, 20.7, 21.0, 19.8, 15.5])]
        }
        "colorization" => {
            vec![row("Colorization (Zhang et al. 2016)", [12.5, 24.5, 30.4, 31.5, 30.3])]
        }
        "split-brain" => {
            vec![row("Split-brain auto (Zhang et al. 2017)", [17.7, 29.3, 35.4, 35.2, 32.8])]
        }
        _ => Vec::new(),
    };
    // The labels and random rows of the patch plans' table (the same seed table).
    rows.extend(imagenet_references("cpc"));
    rows
}

/// The seed's PASCAL VOC 2007 classification rows (Pathak et al. 2016, Table 2), for the
/// autoencoder and the context encoder.
pub fn pascal(method: &str) -> Vec<PascalRow> {
    match method {
        "autoencoder" | "context-encoder" => [
            ("Random init", 53.3),
            ("Autoencoder", 53.8),
            ("Context encoder", 56.5),
            ("ImageNet labels", 78.2),
        ]
        .into_iter()
        .map(|(l, m)| PascalRow { label: l.into(), map: m })
        .collect(),
        _ => Vec::new(),
    }
}

fn variant(training: &str, label: &str, overrides: Value, metric: &str, scale: f64) -> Variant {
    Variant {
        training: training.into(),
        label: label.into(),
        overrides,
        metric: metric.into(),
        scale,
    }
}

fn comparison(a: &str, b: &str, claim: &str, paper: &str) -> Comparison {
    Comparison { a: a.into(), b: b.into(), claim: claim.into(), paper: paper.into() }
}

/// The crate defaults of `method`.
fn method_defaults(method: &str) -> Result<Value> {
    Ok(match method {
        "autoencoder" => serde_json::to_value(selfsup_autoencoder::AutoencoderConfig::default())?,
        "context-encoder" => {
            serde_json::to_value(selfsup_context_encoder::ContextEncoderConfig::default())?
        }
        "colorization" => {
            serde_json::to_value(selfsup_colorization::ColorizationConfig::default())?
        }
        "split-brain" => serde_json::to_value(selfsup_split_brain::SplitBrainConfig::default())?,
        other => {
            bail!("no reconstruction reproduction for `{other}` (known: {})", METHODS.join(", "))
        }
    })
}

/// The context encoder's mask of `kind` with every field (its defaults).
fn mask(kind: &str) -> Value {
    let m: selfsup_data::masks::MaskConfig =
        serde_json::from_value(json!({ "kind": kind })).expect("a mask kind of selfsup-data");
    serde_json::to_value(m).expect("masks serialise")
}

/// The variants, views and comparisons of `method` (the same in every profile). A variant's
/// `overrides` replace whole top-level keys of the method config.
#[allow(clippy::type_complexity)]
fn structure(method: &str) -> (Vec<Variant>, Vec<View>, Vec<Comparison>) {
    match method {
        "autoencoder" => (
            vec![variant(
                "pretrain",
                "denoising autoencoder (masking noise)",
                json!({}),
                "loss",
                1.0,
            )],
            Vec::new(),
            Vec::new(),
        ),
        // Pathak et al. compare the masks (Section 5.2: random regions learn the better
        // features; the central square's boundary gives a low-level shortcut) and the losses
        // (the adversarial term sharpens the inpainting; the feature experiments of the paper
        // use the reconstruction loss).
        "context-encoder" => (
            vec![
                variant(
                    "pretrain",
                    "context encoder, random regions, L_rec + L_adv",
                    json!({}),
                    "rec_loss",
                    1.0,
                ),
                variant(
                    "rec_only",
                    "context encoder, random regions, L_rec alone",
                    json!({"adversarial": false}),
                    "rec_loss",
                    1.0,
                ),
                variant(
                    "central",
                    "context encoder, central region, L_rec + L_adv",
                    json!({ "mask": mask("central") }),
                    "rec_loss",
                    1.0,
                ),
            ],
            Vec::new(),
            vec![
                comparison(
                    "rec_only",
                    "pretrain",
                    "L_rec alone ahead of L_rec + L_adv for features",
                    "L_rec alone for features (the paper's feature experiments)",
                ),
                comparison(
                    "pretrain",
                    "central",
                    "random-region masks ahead of the central region",
                    "yes (Section 5.2)",
                ),
            ],
        ),
        "colorization" => (
            vec![variant(
                "pretrain",
                "colorization (L → ab, rebalanced classes)",
                json!({}),
                "ab_acc",
                100.0,
            )],
            Vec::new(),
            Vec::new(),
        ),
        _ => (
            vec![
                variant(
                    "pretrain",
                    "split-brain (cl, cl): both halves",
                    json!({}),
                    "ab_acc",
                    100.0,
                ),
                variant(
                    "regression",
                    "split-brain (reg, reg): both halves",
                    json!({"loss": "regression"}),
                    "loss",
                    1.0,
                ),
            ],
            vec![
                View {
                    encoder: "l_to_ab".into(),
                    label: "split-brain (cl, cl): L → ab half alone".into(),
                    training: "pretrain".into(),
                    view: json!({"features": "l_to_ab"}),
                },
                View {
                    encoder: "ab_to_l".into(),
                    label: "split-brain (cl, cl): ab → L half alone".into(),
                    training: "pretrain".into(),
                    view: json!({"features": "ab_to_l"}),
                },
            ],
            vec![
                comparison(
                    "pretrain",
                    "l_to_ab",
                    "both halves ahead of the L → ab half alone",
                    "yes (Table 4)",
                ),
                comparison(
                    "pretrain",
                    "ab_to_l",
                    "both halves ahead of the ab → L half alone",
                    "yes (Table 4)",
                ),
                comparison(
                    "pretrain",
                    "regression",
                    "classification losses ahead of regression",
                    "yes (Table 4: cl, cl ahead of reg, reg)",
                ),
            ],
        ),
    }
}

fn adam(lr: f64, beta1: f64, beta2: f64, weight_decay: f64) -> OptimizerConfig {
    OptimizerConfig::Adamw { lr, beta1, beta2, eps: 1e-8, weight_decay }
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

    /// Each paper's ImageNet protocol with the Caffe AlexNet, on the image folder given as
    /// `--dataset folder:PATH` (`train/` and `test/` class subfolders):
    /// - autoencoder and context encoder (pathak22/context-encoder `train.lua`): 227-pixel
    ///   inputs (the AlexNet encoder of the paper's feature experiments), Adam at 2e-4 with
    ///   β1 = 0.5, batch 64, 25 epochs (`niter`), constant; the discriminator likewise (its
    ///   config); masks: random regions;
    /// - colorization and split-brain (richzhang/colorization `solver.prototxt`): 176-pixel
    ///   crops, Adam at 3e-5 with β = (0.9, 0.99) and weight decay 1e-3 (here decoupled), batch
    ///   40, 450,000 iterations (14 epochs of ImageNet), the rate ÷3 at about 200,000 and
    ///   375,000 (epochs 6 and 12).
    ///
    /// Probes: linear on conv1..conv5 pooled to about 9,000 dimensions (Zhang et al.), all
    /// labeled images.
    pub fn paper(method: &str) -> Result<Profile> {
        let mut method_config = method_defaults(method)?;
        let imagenet = json!({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]});
        let (epochs, batch_size, optimizer, schedule) = match method {
            "autoencoder" | "context-encoder" => {
                let c = &mut method_config;
                c["size"] = json!(227);
                c["mean"] = imagenet["mean"].clone();
                c["std"] = imagenet["std"].clone();
                if method == "context-encoder" {
                    c["mask"] = mask("random_regions");
                }
                (25, 64, adam(2e-4, 0.5, 0.999, 0.0), ScheduleConfig::Constant)
            }
            _ => {
                method_config["crop"] = json!(176);
                (
                    14,
                    40,
                    adam(3e-5, 0.9, 0.99, 1e-3),
                    ScheduleConfig::Steps { milestones: vec![6, 12], gamma: 1.0 / 3.0 },
                )
            }
        };
        let (variants, views, comparisons) = structure(method);
        Ok(Profile {
            name: "paper".into(),
            summary: "the paper's ImageNet protocol with the Caffe AlexNet (a GPU job)".into(),
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Imagenet, width: 96 },
            train_images: None,
            epochs,
            batch_size,
            optimizer,
            schedule,
            method_config,
            variants,
            views,
            comparisons,
            supervised_epochs: 90,
            supervised_config: json!({
                "num_classes": 1000,
                "crop_padding": 0,
                "mean": imagenet["mean"],
                "std": imagenet["std"],
            }),
            supervised_optimizer: sgd(0.01, 0.9, 5e-4),
            probe_train_images: None,
            test_images: None,
            linear: linear(36, 256),
            knn: knn("last"),
            probe_seeds: vec![0],
            references: references(method),
            pascal: pascal(method),
            deterministic: false,
            seed: 0,
            log_every: 50,
        })
    }

    /// Trained against random init and the supervised trunk on CIFAR-10, about half an hour a
    /// method on two CPU cores: the quarter-width CIFAR AlexNet of the patch plans (conv1 24
    /// channels) on CIFAR's 32-pixel images as they are (every method here works on the whole
    /// image, so nothing needs upsampling), Adam at 1e-3 with cosine decay, the supervised
    /// trunk 3 epochs, probes with 10,000 labels.
    ///
    /// The context encoder's masks are random regions (a quarter of the image, the paper's
    /// feature-learning masks) with its central-square run beside; the autoencoder corrupts
    /// with masking noise (a quarter of the pixels).
    ///
    /// Budgets from the pretraining throughput measured on 2 cores of an Intel Xeon (family 6,
    /// model 207), fp32, at these configs: with 1 thread beside another 1-thread job, source
    /// images/s, autoencoder 343, context encoder 100 (with its discriminator), colorization 320,
    /// split-brain 354; with 2 threads alone (one epoch of 3,840 images) autoencoder 455, context
    /// encoder 129, split-brain 483. The probes cost about 30 s per encoder and probe seed with 2
    /// threads (the patch plans' measurement), the supervised trunk about 150 s. So: the
    /// autoencoder 10 epochs of 50,000 images, the context encoder's three runs 2 epochs of
    /// 30,000 each, colorization 8 epochs of 50,000, split-brain's two runs 4 epochs of 50,000
    /// each. Timed end to end with 2 threads alone (`/usr/bin/time`, a fresh results folder,
    /// every stage run): the autoencoder 23.7 minutes, the context encoder 27.4, colorization
    /// 23.9, split-brain 25.0; those runs are the folders in `results/`.
    pub fn cpu(method: &str) -> Result<Profile> {
        let mut method_config = method_defaults(method)?;
        let (train_images, epochs) = match method {
            "autoencoder" => (50_000, 10),
            // Three pretrainings, each with a discriminator step beside the generator's.
            "context-encoder" => {
                method_config["mask"] = mask("random_regions");
                (30_000, 2)
            }
            "colorization" => (50_000, 8),
            // Two pretrainings (classification, regression).
            _ => (50_000, 4),
        };
        let (variants, views, comparisons) = structure(method);
        Ok(Profile {
            name: "cpu".into(),
            summary: "trained vs random init and supervised on 2 CPU cores (about 30 min)".into(),
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 24 },
            train_images: Some(train_images),
            epochs,
            batch_size: 128,
            optimizer: adam(1e-3, 0.9, 0.999, 0.0),
            schedule: cosine(),
            method_config,
            variants,
            views,
            comparisons,
            supervised_epochs: 3,
            supervised_config: serde_json::to_value(
                selfsup_supervised::SupervisedConfig::default(),
            )?,
            supervised_optimizer: sgd(0.05, 0.9, 5e-4),
            probe_train_images: Some(10_000),
            test_images: None,
            linear: linear(15, 256),
            knn: knn("last"),
            probe_seeds: vec![0, 1, 2],
            references: references(method),
            pascal: pascal(method),
            deterministic: false,
            seed: 0,
            log_every: 10,
        })
    }

    /// A pipeline check in seconds: a width-4 CIFAR AlexNet (width 6 for split-brain, whose
    /// halves need an even width), 128 images, one epoch.
    pub fn smoke(method: &str) -> Result<Profile> {
        let mut p = Self::cpu(method)?;
        let c = &mut p.method_config;
        match method {
            "autoencoder" => {
                c["decoder_width"] = json!(8);
                c["samples"] = json!(4);
            }
            "context-encoder" => {
                c["decoder_width"] = json!(8);
                c["discriminator_width"] = json!(8);
                c["samples"] = json!(4);
            }
            "colorization" => {
                c["head_width"] = json!(8);
                c["prior_images"] = json!(64);
                c["samples"] = json!(4);
            }
            _ => {
                c["head_width"] = json!(8);
                c["l_bins"] = json!(20);
            }
        }
        let width = if method == "split-brain" { 6 } else { 4 };
        Ok(Profile {
            name: "smoke".into(),
            summary: "pipeline check in seconds (numbers mean nothing)".into(),
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width },
            train_images: Some(128),
            epochs: 1,
            batch_size: 32,
            supervised_epochs: 1,
            probe_train_images: Some(128),
            test_images: Some(64),
            linear: linear(1, 64),
            probe_seeds: vec![0, 1],
            deterministic: true,
            log_every: 1,
            ..p
        })
    }
}

impl Profile {
    /// What every training of this profile shares.
    pub fn trainings(&self) -> crate::plans::Trainings<'_> {
        crate::plans::Trainings {
            encoder: &self.encoder,
            train_images: self.train_images,
            batch_size: self.batch_size,
            schedule: &self.schedule,
            deterministic: self.deterministic,
            seed: self.seed,
            log_every: self.log_every,
        }
    }
}
