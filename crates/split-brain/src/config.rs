//! The split-brain method config (`method_config` of a run), with the paper's defaults (Zhang,
//! Isola, Efros, CVPR 2017, Section 3): L ↔ ab on Lab images, both directions as classification
//! (ab over the 10-spaced in-gamut bins, soft-encoded as in colorization; L over 100 bins).
use serde::{Deserialize, Serialize};

/// The loss each half is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitLoss {
    /// Cross-entropy over quantised values: ab over the ab bins (soft targets), L over
    /// `l_bins` equal bins (the paper's best, default).
    #[default]
    Classification,
    /// L2 on the values themselves (ab / 110 and L / 50 − 1): the paper's regression variant.
    Regression,
}

/// Which halves' features the encoder gives evaluation (its taps). Training is the same
/// whatever this says: an evaluation-time view of the same weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitFeatures {
    /// Both halves concatenated at every tap, `l_to_ab` first: the paper's representation
    /// (default).
    #[default]
    Both,
    /// The half that sees L alone (half of every tap's channels).
    LToAb,
    /// The half that sees ab alone.
    AbToL,
}

/// How each half predicts the other's channels, and how big the heads are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitBrainConfig {
    /// Classification (default) or regression.
    pub loss: SplitLoss,
    /// Spacing of the ab grid. Default 10.
    pub grid: i64,
    /// A `.npy` file of ab bin centres to use instead of the computed in-gamut set (261 bins
    /// on the grid of 10, see `selfsup_lab::AbBins::in_gamut`): for instance the official
    /// `pts_in_hull.npy` of richzhang/colorization, whose 313 bins the papers used. Default
    /// none (computed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ab_bins: Option<std::path::PathBuf>,
    /// Nearest ab bins each target is spread over. Default 5.
    pub neighbours: usize,
    /// σ of the ab soft encoding. Default 5.
    pub sigma: f64,
    /// Number of equal L bins in `[0, 100]`. Default 100 (the paper's).
    pub l_bins: i64,
    /// Weight the ab loss by colour rarity as colorization does. Default false (the paper
    /// trains both directions with the plain cross-entropy).
    pub rebalance: bool,
    /// λ of the rebalancing mixture. Default 0.5.
    pub lambda: f64,
    /// σ of the smoothing of the empirical ab distribution. Default 5.
    pub prior_sigma: f64,
    /// Training images counted for the empirical ab distribution. Default 10,000.
    pub prior_images: u64,
    /// Predictions and targets at `1 / target_downsample` of the input resolution. Default 4.
    pub target_downsample: i64,
    /// Hidden channels of each half's dense head. Default 128.
    pub head_width: i64,
    /// Random horizontal flips of the training images. Default true.
    pub flip: bool,
    /// Side of a random crop of each training image; `null` (default) keeps it whole.
    pub crop: Option<usize>,
    /// Temperature of the annealed-mean decoding of the sample pictures (both directions in
    /// classification). Default 0.38 (colorization's).
    pub temperature: f64,
    /// Number of training images in the sample grid written after each epoch
    /// (`samples/epoch_NNNN.png`: original, ab predicted from L, L predicted from ab); 0 writes
    /// none. Default 8.
    pub samples: usize,
    /// The features the encoder exposes to the probes: `both` (default), `l_to_ab` or
    /// `ab_to_l` (the paper's comparison of each half alone against the concatenation).
    pub features: SplitFeatures,
}

impl Default for SplitBrainConfig {
    fn default() -> Self {
        SplitBrainConfig {
            loss: SplitLoss::Classification,
            grid: 10,
            ab_bins: None,
            neighbours: 5,
            sigma: 5.0,
            l_bins: 100,
            rebalance: false,
            lambda: 0.5,
            prior_sigma: 5.0,
            prior_images: 10_000,
            target_downsample: 4,
            head_width: 128,
            flip: true,
            crop: None,
            temperature: 0.38,
            samples: 8,
            features: SplitFeatures::Both,
        }
    }
}

impl SplitBrainConfig {
    /// Checks the values, naming the first one at fault.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=110).contains(&self.grid) {
            return Err(format!("grid = {} is not in 1..=110", self.grid));
        }
        if self.neighbours == 0 {
            return Err("neighbours = 0: give at least 1".into());
        }
        if self.l_bins < 2 {
            return Err(format!("l_bins = {} must be at least 2", self.l_bins));
        }
        for (name, v) in [("sigma", self.sigma), ("prior_sigma", self.prior_sigma)] {
            if v.is_nan() || v <= 0.0 {
                return Err(format!("{name} = {v} must be positive"));
            }
        }
        if !(self.lambda > 0.0 && self.lambda <= 1.0) {
            return Err(format!("lambda = {} is not in (0, 1]", self.lambda));
        }
        if self.target_downsample < 1 {
            return Err(format!(
                "target_downsample = {} must be at least 1",
                self.target_downsample
            ));
        }
        if self.head_width < 1 {
            return Err(format!("head_width = {} must be positive", self.head_width));
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(format!("temperature = {} must be positive", self.temperature));
        }
        if self.crop == Some(0) {
            return Err("crop = 0: give a side or null".into());
        }
        Ok(())
    }
}
