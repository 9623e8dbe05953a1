//! The three profiles of the patch-grid reproductions (see the plans' docs): `paper` (each
//! paper's ImageNet protocol with the Caffe AlexNet, a GPU job on an image folder the user
//! supplies), `cpu` (trained against random init and the supervised AlexNet on CIFAR-10, about
//! half an hour a method on two CPU cores) and `smoke` (seconds).
use super::METHODS;
use crate::plans::layerwise::{knn, linear};
use crate::plans::{cosine, sgd};
use anyhow::{bail, Result};
use selfsup_core::encoders::AlexnetVariant;
use selfsup_core::optim::OptimizerConfig;
use selfsup_core::schedule::ScheduleConfig;
use selfsup_core::EncoderConfig;
use selfsup_eval::{KnnConfig, LinearProbeConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A published layer-wise linear-probe row (conv1..conv5, top-1 %), printed beside ours and
/// marked with its dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceRow {
    /// The row's label (`Context (Doersch et al. 2015)`).
    pub label: String,
    /// The dataset it was measured on (`ImageNet`).
    pub dataset: String,
    /// conv1..conv5.
    pub top1: [f64; 5],
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
    /// Pretraining epochs (the method run and its ablation alike).
    pub epochs: u64,
    /// Source images per pretraining step.
    pub batch_size: usize,
    /// Pretraining optimizer.
    pub optimizer: OptimizerConfig,
    /// Pretraining schedule.
    pub schedule: ScheduleConfig,
    /// The method's config (its crate's defaults with this profile's geometry).
    pub method_config: Value,
    /// Merged over `method_config` for the ablation run: the main shortcut countermeasure off
    /// (gap and jitter for relative patch and jigsaw, per-patch augmentation for CPC).
    pub ablation: Value,
    /// What the ablation turns off, for the table (`without gap and jitter`).
    pub ablation_label: String,
    /// Epochs of the supervised trunk (labels of the same images, the supervised method's
    /// crop and flip).
    pub supervised_epochs: u64,
    /// The supervised method's config (`selfsup_supervised::SupervisedConfig`): CIFAR-10's
    /// classes and statistics, or ImageNet's in the paper profile.
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
    /// Probe seeds: each draws its own labeled subset and the probe's random choices; the
    /// table gives mean ± standard deviation over them.
    pub probe_seeds: Vec<u64>,
    /// Published layer-wise rows shown beside ours (another dataset: marked as such).
    pub references: Vec<ReferenceRow>,
    /// Bit-for-bit CPU determinism across thread counts (oneDNN off but for the
    /// convolutions, on fixed pieces of the batch; see `selfsup_core::determinism`).
    pub deterministic: bool,
    /// Run seed.
    pub seed: u64,
    /// Metrics line every this many steps.
    pub log_every: u64,
}

/// The seed's ImageNet table (Zhang et al. 2017, Table 2 layout): conv1..conv5 linear probes.
pub fn imagenet_references(method: &str) -> Vec<ReferenceRow> {
    let row =
        |label: &str, top1| ReferenceRow { label: label.into(), dataset: "ImageNet".into(), top1 };
    let mut rows = Vec::new();
    match method {
        "relative-patch" => {
            rows.push(row("Context (Doersch et al. 2015)", [16.2, 23.3, 30.2, 31.7, 29.6]))
        }
        "jigsaw" => {
            rows.push(row("Jigsaw (Noroozi & Favaro 2016)", [18.2, 28.8, 34.0, 33.9, 27.1]))
        }
        _ => {}
    }
    rows.push(row("ImageNet labels", [19.3, 36.3, 44.2, 48.3, 50.5]));
    rows.push(row("Random init", [11.6, 17.1, 16.9, 16.3, 14.1]));
    rows
}

/// The crate defaults of `method` (`method_config`), the paper's ImageNet geometry.
fn method_defaults(method: &str) -> Result<Value> {
    Ok(match method {
        "relative-patch" => {
            serde_json::to_value(selfsup_relative_patch::RelativePatchConfig::default())?
        }
        "jigsaw" => serde_json::to_value(selfsup_jigsaw::JigsawConfig::default())?,
        "cpc" => serde_json::to_value(selfsup_cpc::CpcConfig::default())?,
        other => bail!("no patch-grid reproduction for `{other}` (known: {})", METHODS.join(", ")),
    })
}

/// The ablation of `method` for a method config `c`: the main shortcut countermeasure off.
fn ablation(method: &str, c: &Value) -> (Value, String) {
    match method {
        // Patches edge to edge and never moved: the neighbours' shared borders (and the
        // continuation of lines across them) give the answer away.
        "relative-patch" => (json!({"gap": 0, "jitter": 0}), "without gap and jitter".into()),
        // The same tiles edge to edge: the crop shrinks to three tiles, so each tile fills
        // its cell at the centre (no gap, no jitter) and the trunk sees tiles of the same size
        // (letting the tiles grow to the pretraining's cells instead cost the ablation 1.7×
        // the pixels and twice the time, 307 s an epoch against 155 at the cpu profile).
        "jigsaw" => {
            let tile = c["tile"].as_u64().unwrap_or(64);
            (
                json!({"crop": 3 * tile, "tile": tile, "random_position": false}),
                "without gap and jitter".into(),
            )
        }
        _ => (json!({"patch_augment": false}), "without per-patch augmentation".into()),
    }
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

    /// Each paper's ImageNet protocol with the Caffe AlexNet (BN, one tower), its crop sizes
    /// and schedule, on the image folder given as `--dataset folder:PATH` (with `train/` and
    /// `test/` class subfolders; ImageNet's validation set as `test/`):
    /// - relative patch (deepcontext `train.py`): 96-pixel patches, gap 48, jitter 7, colour
    ///   dropping; plain SGD without momentum or weight decay at rate 1e-5 on the loss summed
    ///   over a batch of up to 512 patches (here the loss is the batch mean, so rate 0.01 over
    ///   about 1,000 pairs), constant;
    /// - jigsaw (bbrattoli/JigsawPuzzlePytorch `JigsawTrain.py`): 255-pixel crops, 64-pixel
    ///   tiles resized to 75, P = 1,000; SGD 0.1, momentum 0.9, weight decay 5e-4, batch 256,
    ///   70 epochs, ×0.1 every 20;
    /// - CPC (van den Oord et al. 2018, §3.2): 256-pixel crops, 7×7 patches of 64 with stride
    ///   32; Adam at 2e-4.
    ///
    /// Probes: linear on conv1..conv5 pooled to about 9,000 dimensions (Zhang et al.), all
    /// labeled images.
    pub fn paper(method: &str) -> Result<Profile> {
        let method_config = method_defaults(method)?;
        let (ablation, ablation_label) = ablation(method, &method_config);
        let (epochs, batch_size, optimizer, schedule) = match method {
            "relative-patch" => (30, 128, sgd(0.01, 0.0, 0.0), ScheduleConfig::Constant),
            "jigsaw" => (
                70,
                256,
                sgd(0.1, 0.9, 5e-4),
                ScheduleConfig::Steps { milestones: vec![20, 40, 60], gamma: 0.1 },
            ),
            _ => (
                30,
                256,
                OptimizerConfig::Adamw {
                    lr: 2e-4,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.0,
                },
                ScheduleConfig::Constant,
            ),
        };
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
            ablation,
            ablation_label,
            supervised_epochs: 90,
            supervised_config: json!({
                "num_classes": 1000,
                "crop_padding": 0,
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            }),
            supervised_optimizer: sgd(0.01, 0.9, 5e-4),
            probe_train_images: None,
            test_images: None,
            linear: linear(36, 256),
            knn: knn("last"),
            probe_seeds: vec![0],
            references: imagenet_references(method),
            deterministic: false,
            seed: 0,
            log_every: 50,
        })
    }

    /// Trained against random init and the supervised trunk on CIFAR-10, about half an hour a
    /// method on two CPU cores: a quarter-width CIFAR AlexNet (conv1 24 channels, a sixteenth
    /// of the multiply-adds), CIFAR's 32-pixel images upsampled so that the pieces the trunk
    /// sees are 16 pixels (see the plans' docs), SGD 0.05 with momentum 0.9, weight decay
    /// 5e-4 and cosine decay, the supervised trunk 3 epochs, probes with 10,000 labels at
    /// probe seeds 0, 1 and 2.
    ///
    /// The budgets split half an hour as measured on 2 cores of an Intel Xeon (family 6, model
    /// 207), alone, fp32, oneDNN on, at these configs: relative patch 2,300 source images/s
    /// (two 8-pixel patches each; 22 s an epoch of 50,000), jigsaw 360 (nine tiles; 140 s),
    /// CPC 118 (25 patches; 424 s), the supervised trunk 1,000 (50 s); the linear probe of
    /// five taps 21 s and kNN 8 s per encoder and probe seed, so the 24 probes take about 6
    /// minutes. The pretraining and its ablation get about 9 minutes each: relative patch
    /// 12 epochs of 50,000 images, jigsaw 4, CPC 2 epochs of 30,000.
    pub fn cpu(method: &str) -> Result<Profile> {
        let mut method_config = method_defaults(method)?;
        let (train_images, epochs, batch_size) = match method {
            // The 32-pixel image as it is: 8-pixel patches, gap 3, jitter 1 (extent 32), fc6
            // on the 2×2 conv5 map unpooled (pool5 2).
            "relative-patch" => {
                let c = &mut method_config;
                c["crop"] = json!(32);
                c["patch"] = json!(8);
                c["gap"] = json!(3);
                c["jitter"] = json!(1);
                c["pool5"] = json!(2);
                c["fc6"] = json!(512);
                c["fc7"] = json!(512);
                (50_000, 12, 128)
            }
            // The 32-pixel image to 63: cells of 21, 16-pixel tiles at random positions,
            // P = 100 (the paper's second size), fc6 on each tile's conv5 map through its
            // global mean (pool5 1, pool5_op mean: it probed best of the three heads measured,
            // listed in the plans' docs).
            "jigsaw" => {
                let c = &mut method_config;
                c["crop"] = json!(63);
                c["tile"] = json!(16);
                c["tile_resize"] = json!(null);
                c["pool5"] = json!(1);
                c["pool5_op"] = json!("mean");
                c["permutations"] = json!(100);
                c["fc6"] = json!(256);
                c["fc7"] = json!(1024);
                (50_000, 4, 64)
            }
            // The 32-pixel image to 48: 5×5 patches of 16 with stride 8, predicting up to 3
            // rows below.
            _ => {
                let c = &mut method_config;
                c["crop"] = json!(48);
                c["patch"] = json!(16);
                c["stride"] = json!(8);
                c["context_width"] = json!(128);
                c["steps"] = json!(3);
                (30_000, 2, 64)
            }
        };
        let (ablation, ablation_label) = ablation(method, &method_config);
        Ok(Profile {
            name: "cpu".into(),
            summary: "trained vs random init and supervised on 2 CPU cores (about 30 min)".into(),
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 24 },
            train_images: Some(train_images),
            epochs,
            batch_size,
            optimizer: sgd(0.05, 0.9, 5e-4),
            schedule: cosine(),
            method_config,
            ablation,
            ablation_label,
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
            references: imagenet_references(method),
            deterministic: false,
            seed: 0,
            log_every: 10,
        })
    }

    /// A pipeline check in seconds: a width-4 CIFAR AlexNet, 128 images, one epoch.
    pub fn smoke(method: &str) -> Result<Profile> {
        let mut p = Self::cpu(method)?;
        let c = &mut p.method_config;
        match method {
            "relative-patch" => {
                c["fc6"] = json!(16);
                c["fc7"] = json!(16);
            }
            "jigsaw" => {
                c["permutations"] = json!(8);
                c["fc6"] = json!(16);
                c["fc7"] = json!(16);
            }
            _ => c["context_width"] = json!(16),
        }
        Ok(Profile {
            name: "smoke".into(),
            summary: "pipeline check in seconds (numbers mean nothing)".into(),
            encoder: EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 4 },
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
