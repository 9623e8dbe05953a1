//! The denoising autoencoder's method config (`method_config` of a run). The corruption levels
//! follow Vincent et al. (ICML 2008, which reports masking noise of 10%, 25% and 40%; JMLR 2010,
//! section 4.3, for the Gaussian and salt-and-pepper noise).
use selfsup_data::masks::Corruption;
use selfsup_data::pipeline::{CIFAR10_MEAN, CIFAR10_STD};
use serde::{Deserialize, Serialize};

/// How inputs are corrupted, how big the decoder is, and the pixel statistics.
///
/// Pixels are corrupted in `[0, 1]` (masking noise sets them to 0, black; salt and pepper to 0
/// or 1), then input and clean target are normalised with `mean` and `std`; the loss is the
/// mean squared error between the reconstruction and the normalised clean image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoencoderConfig {
    /// The corruption: `{"kind": "masking_noise", "fraction": ν}` (default, ν = 0.25),
    /// `{"kind": "gaussian", "std": σ}` (σ default 0.1) or `{"kind": "salt_and_pepper",
    /// "fraction": ν}` (ν default 0.25).
    pub corruption: Corruption,
    /// Channels of the decoder's first up-convolution (halved in each next, at least 8);
    /// `null` (default): half the encoder's output channels, at least 8.
    pub decoder_width: Option<i64>,
    /// Per-channel normalisation mean, one entry per image channel. Default: CIFAR-10's.
    pub mean: Vec<f32>,
    /// Per-channel normalisation standard deviation. Default: CIFAR-10's.
    pub std: Vec<f32>,
    /// Resize the shorter side to this and crop the centre square; `null` (default) keeps the
    /// stored images (which must then be square).
    pub size: Option<usize>,
    /// Random horizontal flip of the clean image. Default false (the paper augments nothing).
    pub horizontal_flip: bool,
    /// Write a grid of samples (corrupted input, reconstruction, original) into
    /// `samples/epoch-<n>.png` of the run folder every this many epochs and after the last;
    /// 0 never. Default 5.
    pub sample_every: u64,
    /// Images in the sample grid. Default 8.
    pub samples: usize,
}

impl Default for AutoencoderConfig {
    fn default() -> Self {
        AutoencoderConfig {
            corruption: Corruption::default(),
            decoder_width: None,
            mean: CIFAR10_MEAN.to_vec(),
            std: CIFAR10_STD.to_vec(),
            size: None,
            horizontal_flip: false,
            sample_every: 5,
            samples: 8,
        }
    }
}

impl AutoencoderConfig {
    /// Checks the values, naming the first one at fault (the pixel statistics are checked
    /// against the images when the method is built).
    pub fn check(&self) -> Result<(), String> {
        self.corruption.check()?;
        if let Some(w) = self.decoder_width.filter(|w| *w < 1) {
            return Err(format!("decoder_width = {w} must be at least 1"));
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
    fn defaults_round_trip_and_bad_values_are_named() {
        let c = AutoencoderConfig::default();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["corruption"], serde_json::json!({"kind": "masking_noise", "fraction": 0.25}));
        assert_eq!(serde_json::from_value::<AutoencoderConfig>(v).unwrap(), c);
        let c: AutoencoderConfig =
            serde_json::from_str(r#"{"corruption": {"kind": "gaussian"}}"#).unwrap();
        assert_eq!(c.corruption, Corruption::Gaussian { std: 0.1 });
        let bad = AutoencoderConfig {
            corruption: Corruption::SaltAndPepper { fraction: 2.0 },
            ..AutoencoderConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("corruption.fraction = 2"));
        let bad = AutoencoderConfig { decoder_width: Some(0), ..AutoencoderConfig::default() };
        assert!(bad.check().unwrap_err().contains("decoder_width = 0"));
        let e = serde_json::from_str::<AutoencoderConfig>(r#"{"noise": 0.1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `noise`"), "{e}");
    }
}
