//! The relative-patch method config (`method_config` of a run), with the paper's defaults
//! (Doersch, Gupta, Efros, "Unsupervised Visual Representation Learning by Context
//! Prediction", ICCV 2015, §3 and §4; official code cdoersch/deepcontext).
use serde::{Deserialize, Serialize};

/// What guards against chromatic aberration, the shortcut the paper found: lenses shift green
/// against magenta across the image, so colour alone tells where a patch sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorShortcut {
    /// Keep one random channel of each patch and replace the other two by Gaussian noise
    /// (standard deviation `noise_fraction` of the kept channel's): the paper's "color
    /// dropping" (default).
    #[default]
    Drop,
    /// Project every pixel onto the plane orthogonal to the green-magenta axis
    /// `(-1, 2, -1)/√6`: the paper's "projection".
    Project,
    /// Nothing (the ablation).
    None,
}

/// How patch pairs are made and how big the late-fusion head is.
///
/// The shortcut countermeasures are on by default and each can be switched off: the `gap`
/// between patches, the `jitter` of each patch, colour dropping or projection (`color`) and
/// per-patch normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelativePatchConfig {
    /// Side of the square the pair is cut from: the image's shorter side is resized to it and
    /// the centre cropped. Default 400 (room for the paper's 96-pixel patches, 48-pixel gaps
    /// and 7-pixel jitter, whose grid spans 398 pixels).
    pub crop: usize,
    /// Patch side. Default 96 (the paper's).
    pub patch: usize,
    /// Pixels between neighbouring patches. Default 48 (half a patch, the paper's).
    pub gap: usize,
    /// Maximum random displacement of each patch, per axis. Default 7 (the paper's, at
    /// 96-pixel patches).
    pub jitter: usize,
    /// Place the 3×3 grid at a random position in the crop (`true`, default: the first patch
    /// is sampled over the image, as the paper does) or centred.
    pub random_grid: bool,
    /// The chromatic-aberration countermeasure. Default `drop`.
    pub color: ColorShortcut,
    /// Probability that a patch is downsampled to as few as about a hundredth of its pixels
    /// and upsampled back (the official code's `prep_image`, for robustness to pixelation:
    /// at 96 pixels a side drawn with `side² ~ U(10², 95²)`, scaled with the patch). Default
    /// 0.33 (the official code's).
    pub downsample_p: f64,
    /// Standard deviation of the noise that replaces dropped channels, as a fraction of the
    /// kept channel's. Default 0.01 (the paper's "about 1/100").
    pub noise_fraction: f64,
    /// Normalise each patch on its own: each channel's mean subtracted, the patch divided by
    /// its root mean square over all channels together (the official code's `prep_image`; one
    /// scale for the patch, so dropped channels stay noise at `noise_fraction` of the kept
    /// one). Default true.
    pub normalize_patches: bool,
    /// Side of the grid the trunk's last map is max-pooled to before `fc6` sees it flattened
    /// (the paper's `pool5`, which keeps where in the patch a feature sits: at its 96-pixel
    /// patches AlexNet's pool5 is 2×2). Default 2; 1 takes the map's global maximum, so `fc6`
    /// sees only what is in the patch, not where (versions before `pool5` averaged the map).
    pub pool5: i64,
    /// Width of the per-patch fully connected layer `fc6` (shared by both patches). Default
    /// 4096 (the paper's).
    pub fc6: i64,
    /// Width of `fc7`, on the two `fc6` outputs concatenated. Default 4096.
    pub fc7: i64,
    /// Dropout after `fc6` and `fc7` in training. Default 0.5.
    pub dropout: f64,
}

impl Default for RelativePatchConfig {
    fn default() -> Self {
        RelativePatchConfig {
            crop: 400,
            patch: 96,
            gap: 48,
            jitter: 7,
            random_grid: true,
            color: ColorShortcut::Drop,
            downsample_p: 0.33,
            noise_fraction: 0.01,
            normalize_patches: true,
            pool5: 2,
            fc6: 4096,
            fc7: 4096,
            dropout: 0.5,
        }
    }
}

impl RelativePatchConfig {
    /// The 3×3 grid of patches the pair is drawn from.
    pub fn grid(&self) -> selfsup_data::pretext::PatchGrid {
        selfsup_data::pretext::PatchGrid {
            grid: 3,
            patch: self.patch,
            gap: self.gap,
            jitter: self.jitter,
        }
    }

    /// Checks the values, naming the first one at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.patch == 0 {
            return Err("patch = 0: give a patch side".into());
        }
        let extent = self.grid().extent();
        if extent > self.crop {
            return Err(format!(
                "the grid of 3 patches of {} with gap {} and jitter {} spans {extent} pixels, \
                 more than crop = {}",
                self.patch, self.gap, self.jitter, self.crop
            ));
        }
        if !(0.0..=1.0).contains(&self.downsample_p) {
            return Err(format!("downsample_p = {} is not a probability", self.downsample_p));
        }
        if !(self.noise_fraction >= 0.0 && self.noise_fraction.is_finite()) {
            return Err(format!("noise_fraction = {} is not a fraction", self.noise_fraction));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout = {} is not in [0, 1)", self.dropout));
        }
        if self.pool5 < 1 {
            return Err(format!("pool5 = {} must be at least 1", self.pool5));
        }
        if self.fc6 < 1 || self.fc7 < 1 {
            return Err(format!("fc6 = {} and fc7 = {} must be positive", self.fc6, self.fc7));
        }
        Ok(())
    }
}
