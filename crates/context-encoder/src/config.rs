//! The context encoder's method config (`method_config` of a run), with the defaults of the
//! paper (Pathak et al., CVPR 2016, sections 3.2–4) and the official code
//! (pathak22/context-encoder, `train.lua`: `wtl2 = 0.999`, `overlapPred = 4`,
//! `overlapL2Weight = 10`, Adam with `lr = 0.0002`, `beta1 = 0.5`).
use selfsup_core::optim::OptimizerConfig;
use selfsup_data::masks::MaskConfig;
use selfsup_data::pipeline::{CIFAR10_MEAN, CIFAR10_STD};
use serde::{Deserialize, Serialize};

/// What is hidden, how the loss weighs it, and the adversarial part.
///
/// The input is the normalised image with the hidden pixels set to the dataset mean (0 after
/// normalisation); the network predicts the whole image, and the reconstruction loss counts the
/// hole and an `overlap`-pixel border around it (visible in the input), the border weighted
/// `overlap_weight`. The paper's 128-pixel centre setting (a 64-pixel prediction whose inner
/// 56 pixels are hidden) is `{"mask": {"kind": "central", "fraction": 0.4375}, "overlap": 4}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextEncoderConfig {
    /// The mask: `{"kind": "central", "fraction": 0.5}` (default), `random_blocks` or
    /// `random_regions` (see [`MaskConfig`]).
    pub mask: MaskConfig,
    /// Width in pixels of the border around the hole that is predicted too; `null` (default):
    /// the paper's 4 pixels of 128 scaled to the image, `round(side / 32)`, at least 1.
    pub overlap: Option<usize>,
    /// Weight of the border pixels in the reconstruction loss (hole pixels weigh 1). Default 10.
    pub overlap_weight: f64,
    /// λ_rec, the weight of the reconstruction loss. Default 0.999.
    pub lambda_rec: f64,
    /// λ_adv, the weight of the adversarial loss. Default 0.001.
    pub lambda_adv: f64,
    /// Train against a discriminator (`true`, default); `false` is the reconstruction loss
    /// alone, with no discriminator built.
    pub adversarial: bool,
    /// Put the channel-wise fully connected layer between encoder and decoder. Default true.
    pub bottleneck: bool,
    /// Channels of the decoder's first up-convolution (halved in each next, at least 8);
    /// `null` (default): half the encoder's output channels, at least 8.
    pub decoder_width: Option<i64>,
    /// Channels of the discriminator's first convolution (doubled in each next, at most 8×).
    /// Default 64 (DCGAN's `ndf`).
    pub discriminator_width: i64,
    /// The discriminator's own optimizer, stepped after each step of the run's optimizer.
    /// Default Adam (AdamW without decay), lr 0.0002, β1 0.5, β2 0.999 (the official code's).
    pub discriminator_optimizer: OptimizerConfig,
    /// Per-channel normalisation mean, one entry per image channel: also the fill of the hidden
    /// pixels. Default: CIFAR-10's.
    pub mean: Vec<f32>,
    /// Per-channel normalisation standard deviation. Default: CIFAR-10's.
    pub std: Vec<f32>,
    /// Resize the shorter side to this and crop the centre square; `null` (default) keeps the
    /// stored images (which must then be square).
    pub size: Option<usize>,
    /// Random horizontal flip. Default true (the official loader flips).
    pub horizontal_flip: bool,
    /// Write a grid of samples (masked input, prediction, original) into
    /// `samples/epoch-<n>.png` of the run folder every this many epochs and after the last;
    /// 0 never. Default 5.
    pub sample_every: u64,
    /// Images in the sample grid. Default 8.
    pub samples: usize,
}

impl Default for ContextEncoderConfig {
    fn default() -> Self {
        ContextEncoderConfig {
            mask: MaskConfig::default(),
            overlap: None,
            overlap_weight: 10.0,
            lambda_rec: 0.999,
            lambda_adv: 0.001,
            adversarial: true,
            bottleneck: true,
            decoder_width: None,
            discriminator_width: 64,
            discriminator_optimizer: OptimizerConfig::Adamw {
                lr: 2e-4,
                beta1: 0.5,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            mean: CIFAR10_MEAN.to_vec(),
            std: CIFAR10_STD.to_vec(),
            size: None,
            horizontal_flip: true,
            sample_every: 5,
            samples: 8,
        }
    }
}

impl ContextEncoderConfig {
    /// The overlap border for `side`-pixel images: `overlap`, else `round(side / 32)` (at
    /// least 1).
    pub fn overlap_for(&self, side: i64) -> usize {
        self.overlap.unwrap_or_else(|| ((side as f64 / 32.0).round() as usize).max(1))
    }

    /// Checks the values, naming the first one at fault (the pixel statistics are checked
    /// against the images, and the discriminator's optimizer when it is built).
    pub fn check(&self) -> Result<(), String> {
        self.mask.check()?;
        let weight = |field: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{field} = {v} must be finite and >= 0"))
            }
        };
        weight("overlap_weight", self.overlap_weight)?;
        weight("lambda_rec", self.lambda_rec)?;
        weight("lambda_adv", self.lambda_adv)?;
        if self.lambda_rec == 0.0 && (!self.adversarial || self.lambda_adv == 0.0) {
            return Err("lambda_rec = 0 leaves no loss to train on".into());
        }
        if let Some(w) = self.decoder_width.filter(|w| *w < 1) {
            return Err(format!("decoder_width = {w} must be at least 1"));
        }
        if self.discriminator_width < 1 {
            return Err(format!(
                "discriminator_width = {} must be at least 1",
                self.discriminator_width
            ));
        }
        if self.size == Some(0) {
            return Err("size = 0: give a side or null".into());
        }
        if self.samples > 256 {
            return Err(format!("samples = {} is more than 256 images", self.samples));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_paper_s_and_bad_values_are_named() {
        let c = ContextEncoderConfig::default();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["mask"], serde_json::json!({"kind": "central", "fraction": 0.5}));
        assert_eq!(v["discriminator_optimizer"]["kind"], "adamw");
        assert_eq!(serde_json::from_value::<ContextEncoderConfig>(v).unwrap(), c);
        assert_eq!((c.overlap_for(128), c.overlap_for(32), c.overlap_for(8)), (4, 1, 1));
        let bad = ContextEncoderConfig { lambda_adv: -1.0, ..c.clone() };
        assert!(bad.check().unwrap_err().contains("lambda_adv = -1"));
        let bad = ContextEncoderConfig { lambda_rec: 0.0, adversarial: false, ..c.clone() };
        assert!(bad.check().unwrap_err().contains("lambda_rec = 0"));
        let bad = ContextEncoderConfig { mask: MaskConfig::Central { fraction: 0.0 }, ..c };
        assert!(bad.check().unwrap_err().contains("mask.fraction = 0"));
        let e = serde_json::from_str::<ContextEncoderConfig>(r#"{"lambda": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `lambda`"), "{e}");
    }
}
