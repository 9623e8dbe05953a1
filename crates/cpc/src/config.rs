//! The CPC method config (`method_config` of a run), after CPC v2 (Hénaff et al., "Data-Efficient
//! Image Recognition with Contrastive Predictive Coding", 2019/2020) with its ImageNet geometry
//! as the defaults: a 256-pixel crop cut into 7×7 overlapping 64-pixel patches (stride 32).
use serde::{Deserialize, Serialize};

/// How patches are cut and predicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpcConfig {
    /// Side of the square the patch grid is cut from (the image's shorter side is resized to
    /// it and the centre cropped). Default 256.
    pub crop: usize,
    /// Patch side. Default 64.
    pub patch: usize,
    /// Stride between patches (half a patch: they overlap). Default 32.
    pub stride: usize,
    /// Width of the context network (and of the patch embeddings it reads). Default 512.
    pub context_width: i64,
    /// Row-causal convolution layers of the context network. Default 3.
    pub context_layers: usize,
    /// Rows of the context network's kernels (how far up one layer looks). Default 2.
    pub context_kernel: usize,
    /// Predict the patches up to this many rows below. Default 3 (CPC v2 predicts every row
    /// below; with a 7-row grid and row 0 as the first context, up to 6).
    pub steps: usize,
    /// Per-patch augmentation (CPC v2): each patch independently turned to grayscale with
    /// probability 0.25 and its brightness and contrast jittered, against shortcuts through
    /// low-level statistics shared by neighbouring patches. Default true.
    pub patch_augment: bool,
    /// Normalise each patch by its own per-channel mean and standard deviation. Default true.
    pub normalize_patches: bool,
}

impl Default for CpcConfig {
    fn default() -> Self {
        CpcConfig {
            crop: 256,
            patch: 64,
            stride: 32,
            context_width: 512,
            context_layers: 3,
            context_kernel: 2,
            steps: 3,
            patch_augment: true,
            normalize_patches: true,
        }
    }
}

impl CpcConfig {
    /// Patches per side of the grid.
    pub fn grid(&self) -> usize {
        if self.patch > self.crop || self.stride == 0 {
            return 0;
        }
        (self.crop - self.patch) / self.stride + 1
    }

    /// Checks the values, naming the first one at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.patch == 0 || self.stride == 0 {
            return Err(format!(
                "patch = {} and stride = {} must be positive",
                self.patch, self.stride
            ));
        }
        let g = self.grid();
        if g < 2 {
            return Err(format!(
                "crop = {}, patch = {}, stride = {} give a grid of {g} rows: need at least 2",
                self.crop, self.patch, self.stride
            ));
        }
        if self.steps == 0 || self.steps >= g {
            return Err(format!("steps = {} must be in 1..{g} (rows of the grid)", self.steps));
        }
        if self.context_layers == 0 || self.context_kernel == 0 || self.context_width < 1 {
            return Err(format!(
                "context_layers = {}, context_kernel = {}, context_width = {} must be positive",
                self.context_layers, self.context_kernel, self.context_width
            ));
        }
        Ok(())
    }
}
