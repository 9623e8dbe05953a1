//! The colorization method config (`method_config` of a run), with the paper's defaults
//! (Zhang, Isola, Efros, ECCV 2016, Section 2): 5 nearest bins with σ = 5 for the soft targets
//! (the official `caffe_traininglayers.py` uses 10 neighbours), λ = 0.5 for the rebalancing
//! (`gamma = .5` there) and T = 0.38 for decoding.
use serde::{Deserialize, Serialize};

/// How targets are encoded, weighted and decoded, and how big the head is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColorizationConfig {
    /// Spacing of the ab grid. Default 10 (the paper's).
    pub grid: i64,
    /// A `.npy` file of ab bin centres to use instead of the computed in-gamut set (261 bins
    /// on the grid of 10, see `selfsup_lab::AbBins::in_gamut`): for instance the official
    /// `pts_in_hull.npy` of richzhang/colorization, whose 313 bins the papers used. Default
    /// none (computed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ab_bins: Option<std::path::PathBuf>,
    /// Nearest bins each target ab is spread over. Default 5.
    pub neighbours: usize,
    /// σ of the soft encoding's Gaussian, in ab units. Default 5.
    pub sigma: f64,
    /// Weight each pixel's loss by the rarity of its colour (Eq. 3–4). Default true.
    pub rebalance: bool,
    /// λ, the uniform distribution's share in the mixture the weights invert. Default 0.5.
    pub lambda: f64,
    /// σ of the Gaussian smoothing the empirical distribution. Default 5.
    pub prior_sigma: f64,
    /// Training images whose ab bins are counted for the empirical distribution (the first
    /// ones the trainer serves; then it is frozen). Default 10,000.
    pub prior_images: u64,
    /// The loss is taken at `1 / target_downsample` of the input resolution, the targets
    /// average-pooled to it (the paper: 56 × 56 targets of 224 × 224 inputs, so 4). Default 4.
    pub target_downsample: i64,
    /// Channels of the head's hidden 1 × 1 conv (conv, BN, ReLU, then a 1 × 1 conv to the Q
    /// bins, upsampled bilinearly to the target resolution). Default 128.
    pub head_width: i64,
    /// Temperature of the annealed-mean decoding of the sample pictures. Default 0.38.
    pub temperature: f64,
    /// Random horizontal flips of the training images. Default true.
    pub flip: bool,
    /// Side of a random crop of each training image; `null` (default) keeps the whole image
    /// (the paper crops 176 of ImageNet's 256).
    pub crop: Option<usize>,
    /// Number of training images shown in the colourised sample grid written after each epoch
    /// (`samples/epoch_NNNN.png`: grayscale input, prediction, original); 0 writes none.
    /// Default 8.
    pub samples: usize,
}

impl Default for ColorizationConfig {
    fn default() -> Self {
        ColorizationConfig {
            grid: 10,
            ab_bins: None,
            neighbours: 5,
            sigma: 5.0,
            rebalance: true,
            lambda: 0.5,
            prior_sigma: 5.0,
            prior_images: 10_000,
            target_downsample: 4,
            head_width: 128,
            temperature: 0.38,
            flip: true,
            crop: None,
            samples: 8,
        }
    }
}

impl ColorizationConfig {
    /// Checks the values, naming the first one at fault.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=110).contains(&self.grid) {
            return Err(format!("grid = {} is not in 1..=110", self.grid));
        }
        if self.neighbours == 0 {
            return Err("neighbours = 0: give at least 1".into());
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
