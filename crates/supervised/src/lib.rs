//! The supervised baseline of every table: the same encoder trained with the labels, plus a
//! linear head on its globally average-pooled output, by cross-entropy. This is the "supervised"
//! upper bound of RotNet (gidariss/FeatureLearningRotNet, `config/CIFAR10_supervised_NIN.py`:
//! SGD 0.1, Nesterov, weight decay 5e-4, ×0.2 at epochs 60, 120, 160 of 200, which the run
//! config's optimizer and schedule express) and of Zhang et al.'s tables. It is a
//! [`PretextMethod`] like the self-supervised ones, so the core trainer trains it, checkpoints
//! it, and the evaluation protocols score its encoder the same way.
//!
//! Registered as `supervised` by [`register`]; config [`SupervisedConfig`].
#![deny(missing_docs)]

use selfsup_core::encoders::{linear, Linear, LinearBias};
use selfsup_core::method::classification_loss;
use selfsup_core::{
    build_encoder, BuildContext, CoreError, Encoder, MethodEntry, PretextMethod, Registry,
    StepOutput,
};
use selfsup_data::{Batch, Op, Pipeline};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// CIFAR-10 per-channel mean of the official RotNet code: `[125.3, 123.0, 113.9] / 255`.
pub const CIFAR10_MEAN: [f32; 3] = [125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0];
/// CIFAR-10 per-channel standard deviation of the official RotNet code:
/// `[63.0, 62.1, 66.7] / 255`.
pub const CIFAR10_STD: [f32; 3] = [63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0];

/// Errors of the supervised method.
#[derive(Debug, thiserror::Error)]
pub enum SupervisedError {
    /// A method config value that is malformed or does not fit the data.
    #[error("supervised config: {0}")]
    Config(String),
    /// A batch the method cannot train on (wrong number of views, missing labels).
    #[error("supervised: {0}")]
    Batch(String),
    /// An error from libtorch.
    #[error("supervised: libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<SupervisedError> for CoreError {
    fn from(e: SupervisedError) -> Self {
        match e {
            SupervisedError::Torch(t) => CoreError::Torch(t),
            SupervisedError::Batch(m) => CoreError::Training(format!("supervised: {m}")),
            other => CoreError::Config(other.to_string()),
        }
    }
}

/// Settings of the supervised baseline. Every field has a default; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisedConfig {
    /// Number of classes of the labels. Default 10.
    #[serde(default = "default_classes")]
    pub num_classes: i64,
    /// Zero padding of the random crop back to the image size (official CIFAR training
    /// transform `RandomCrop(32, padding=4)`); 0 disables the crop. Default 4.
    #[serde(default = "default_padding")]
    pub crop_padding: usize,
    /// Random horizontal flip. Default true.
    #[serde(default = "default_true")]
    pub horizontal_flip: bool,
    /// Per-channel normalisation mean. Default [`CIFAR10_MEAN`].
    #[serde(default = "default_mean")]
    pub mean: Vec<f32>,
    /// Per-channel normalisation std. Default [`CIFAR10_STD`].
    #[serde(default = "default_std")]
    pub std: Vec<f32>,
}

fn default_classes() -> i64 {
    10
}
fn default_padding() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_mean() -> Vec<f32> {
    CIFAR10_MEAN.to_vec()
}
fn default_std() -> Vec<f32> {
    CIFAR10_STD.to_vec()
}

impl Default for SupervisedConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

/// The encoder plus a linear classifier, trained with labels.
#[derive(Debug)]
pub struct Supervised {
    encoder: Box<dyn Encoder>,
    head: Linear,
    cfg: SupervisedConfig,
    image_size: i64,
}

impl Supervised {
    /// Refuses labels outside `0..num_classes` (an unlabeled split reads as -1), naming their
    /// range. Reads them back: call it on host tensors.
    fn check_labels(&self, labels: &Tensor) -> selfsup_core::Result<()> {
        if labels.numel() == 0 {
            return Ok(());
        }
        let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
        if lo < 0 || hi >= self.cfg.num_classes {
            return Err(SupervisedError::Batch(format!(
                "labels span {lo}..={hi}, expected 0..{} (is the training split labeled?)",
                self.cfg.num_classes
            ))
            .into());
        }
        Ok(())
    }

    /// Builds the encoder under `root / "encoder"` and the head under `root / "head"`.
    pub fn new(
        root: &nn::Path,
        cfg: SupervisedConfig,
        ctx: &BuildContext,
    ) -> Result<Self, SupervisedError> {
        let channels = ctx.image_channels as usize;
        if cfg.mean.len() != channels || cfg.std.len() != channels {
            return Err(SupervisedError::Config(format!(
                "mean has {} and std {} entries but the images have {channels} channels",
                cfg.mean.len(),
                cfg.std.len()
            )));
        }
        if let Some(s) = cfg.std.iter().find(|s| s.is_nan() || **s <= 0.0) {
            return Err(SupervisedError::Config(format!("std entry {s} is not positive")));
        }
        if cfg.num_classes < 2 {
            return Err(SupervisedError::Config(format!(
                "num_classes {} must be at least 2",
                cfg.num_classes
            )));
        }
        let encoder = build_encoder(&(root / "encoder"), &ctx.encoder, ctx.image_channels);
        // As the official RotNet classifiers: `nn.Linear`'s default weights, bias zeroed.
        let head = linear(root / "head", encoder.out_channels(), cfg.num_classes, LinearBias::Zero);
        Ok(Supervised { encoder, head, cfg, image_size: ctx.image_size })
    }

    /// Class logits.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)` → `(N, num_classes)`.
    pub fn logits_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let feats = self.encoder.forward_t(xs, train);
        self.head.forward(&feats.mean_dim([2i64, 3].as_slice(), false, Kind::Float))
    }

    /// The single view: random crop with padding and flip (as configured), normalisation.
    pub fn view_pipeline(&self) -> Pipeline {
        let mut ops = Vec::new();
        if self.cfg.crop_padding > 0 {
            ops.push(Op::RandomCrop {
                size: self.image_size as usize,
                padding: self.cfg.crop_padding,
            });
        }
        if self.cfg.horizontal_flip {
            ops.push(Op::HorizontalFlip { p: 0.5 });
        }
        ops.push(Op::Normalize { mean: self.cfg.mean.clone(), std: self.cfg.std.clone() });
        Pipeline { ops }
    }
}

impl PretextMethod for Supervised {
    fn name(&self) -> &str {
        "supervised"
    }

    fn views(&self) -> Vec<Pipeline> {
        vec![self.view_pipeline()]
    }

    fn encoder(&self) -> &dyn Encoder {
        &*self.encoder
    }

    fn class_logits_t(&self, xs: &Tensor) -> Option<Tensor> {
        Some(self.logits_t(xs, false))
    }

    /// The labels' range, on the host before the trainer uploads the batch.
    fn check_batch(&self, batch: &Batch) -> selfsup_core::Result<()> {
        self.check_labels(&batch.labels)
    }

    fn step(&mut self, batch: &Batch, train: bool) -> selfsup_core::Result<StepOutput> {
        let images = match batch.views.as_slice() {
            [x] => x,
            other => {
                return Err(SupervisedError::Batch(format!(
                    "batch has {} views, expected 1",
                    other.len()
                ))
                .into())
            }
        };
        let labels = &batch.labels;
        let n = labels.size().first().copied().unwrap_or(0);
        if n == 0 {
            return Err(SupervisedError::Batch("empty batch".into()).into());
        }
        // On a GPU the trainer checked them on the host (`check_batch`); reading them here
        // would make the host wait for the device.
        if labels.device() == tch::Device::Cpu {
            self.check_labels(labels)?;
        }
        let logits = self.logits_t(images, train);
        let (loss, acc) = classification_loss(&logits, labels)?;
        Ok(StepOutput { loss, metrics: vec![("train_acc".to_string(), acc)], inputs: n })
    }
}

fn default_config() -> serde_json::Value {
    serde_json::to_value(SupervisedConfig::default()).expect("SupervisedConfig serializes to JSON")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: SupervisedConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("supervised method_config: {e}")))?;
    Ok(Box::new(Supervised::new(root, cfg, ctx)?))
}

/// Registers `supervised` (config: [`SupervisedConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "supervised",
        description: "Supervised baseline: the encoder plus a linear head trained on labels by cross-entropy",
        default_config,
        build,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_core::EncoderConfig;
    use tch::nn::OptimizerConfig;
    use tch::Device;

    fn ctx() -> BuildContext {
        BuildContext {
            device: Device::Cpu,
            seed: 0,
            num_train_images: 16,
            image_channels: 3,
            image_size: 16,
            encoder: EncoderConfig::Tiny { width: 4, batch_norm: true },
            group: None,
        }
    }

    #[test]
    fn registers_builds_and_rejects_bad_config() {
        let mut r = Registry::new();
        register(&mut r);
        assert_eq!(r.names(), vec!["supervised"]);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = r.build("supervised", &vs.root(), &default_config(), &ctx()).unwrap();
        assert_eq!(m.name(), "supervised");
        assert_eq!(m.encoder().tap_names(), vec!["block1", "block2"]);
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names.iter().any(|n| n.starts_with("encoder.")));
        assert!(names.contains(&"head.weight".to_string()));
        let ops = &m.views()[0].ops;
        assert_eq!(ops[0], Op::RandomCrop { size: 16, padding: 4 });
        let bad = r.build("supervised", &vs.root(), &serde_json::json!({"classes": 3}), &ctx());
        assert!(bad.err().unwrap().to_string().contains("unknown field `classes`"));
    }

    #[test]
    fn loss_falls_on_a_fixed_batch() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = Supervised::new(&vs.root(), SupervisedConfig::default(), &ctx()).unwrap();
        let x = Tensor::randn([20, 3, 16, 16], (Kind::Float, Device::Cpu));
        let labels = Tensor::arange(20, (Kind::Int64, Device::Cpu)).remainder(10);
        let batch = Batch {
            views: vec![x],
            labels,
            indices: Tensor::arange(20, (Kind::Int64, Device::Cpu)),
        };
        let mut opt = nn::Sgd { momentum: 0.9, ..Default::default() }.build(&vs, 0.2).unwrap();
        let first = m.step(&batch, true).unwrap();
        let l0 = first.loss.double_value(&[]);
        assert_eq!(first.inputs, 20);
        opt.backward_step(&first.loss);
        let mut last = l0;
        for _ in 0..40 {
            let out = m.step(&batch, true).unwrap();
            last = out.loss.double_value(&[]);
            opt.backward_step(&out.loss);
        }
        assert!(last < 0.8 * l0, "loss {l0} -> {last}");
        // Unlabeled batches are an error, not a panic.
        let unlabeled =
            Batch { labels: Tensor::full([20], -1, (Kind::Int64, Device::Cpu)), ..batch };
        let err = m.step(&unlabeled, true).unwrap_err().to_string();
        assert!(err.contains("labels span -1..=-1"), "{err}");
    }
}
