//! The split-brain encoder (Zhang, Isola, Efros, CVPR 2017, Section 3.1): the network split by
//! channels into two disjoint halves, each half of every layer's width. `l_to_ab` sees only L
//! (one input channel), `ab_to_l` sees only ab (two); the representation is both halves'
//! features concatenated at every tap, so AlexNet's conv1..conv5 have the unsplit widths (96,
//! 256, 384, 384, 256 at the default width; exactly so whenever `width` is a multiple of 6,
//! else up to a channel fewer per layer from the rounding of the scaled widths).
//!
//! As an [`Encoder`] it takes RGB (or gray) images in `[0, 1]`, as evaluation feeds them,
//! converts them to Lab and gives each half its channels. [`SplitFeatures`] picks what its taps
//! are: both halves concatenated (the representation) or one half alone (the paper's
//! comparison of the halves).
use crate::config::SplitFeatures;
use selfsup_colorization::net::{ab_input, l_input};
use selfsup_core::encoders::{try_build_encoder, Encoder, EncoderConfig};
use selfsup_core::CoreError;
use selfsup_lab::rgb_to_lab;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// The config of each half: the trunk's at half its width.
///
/// # Errors
/// An encoder without a width (the ResNets) or an odd width, naming it.
pub fn half_config(cfg: &EncoderConfig) -> Result<EncoderConfig, String> {
    let half = |width: i64| -> Result<i64, String> {
        if width < 2 || width % 2 != 0 {
            return Err(format!(
                "encoder.width = {width} must be even and at least 2 (each half has width / 2)"
            ));
        }
        Ok(width / 2)
    };
    Ok(match cfg {
        EncoderConfig::Tiny { width, batch_norm } => {
            EncoderConfig::Tiny { width: half(*width)?, batch_norm: *batch_norm }
        }
        EncoderConfig::Nin { blocks, width } => {
            EncoderConfig::Nin { blocks: *blocks, width: half(*width)? }
        }
        EncoderConfig::Alexnet { variant, width } => {
            EncoderConfig::Alexnet { variant: *variant, width: half(*width)? }
        }
        other => {
            let kind = serde_json::to_value(other)
                .ok()
                .and_then(|v| v["kind"].as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(format!(
                "encoder `{kind}` has no width to split in two halves: use tiny, nin or alexnet"
            ));
        }
    })
}

/// Two half-width trunks side by side: `l_to_ab` on L, `ab_to_l` on ab.
///
/// # Shapes
/// Input `(N, 3, H, W)` RGB or `(N, 1, H, W)` gray in `[0, 1]`; every tap is `(N, C_l + C_ab,
/// h, w)`, the `l_to_ab` channels first ([`SplitFeatures::Both`]), or one half's `(N, C, h,
/// w)`.
#[derive(Debug)]
pub struct SplitEncoder {
    l_to_ab: Box<dyn Encoder>,
    ab_to_l: Box<dyn Encoder>,
    features: SplitFeatures,
}

impl SplitEncoder {
    /// Builds the halves under `p / "l_to_ab"` (one input channel) and `p / "ab_to_l"` (two),
    /// each with [`half_config`] of `cfg`.
    pub fn new(p: &nn::Path, cfg: &EncoderConfig) -> Result<Self, CoreError> {
        let half = half_config(cfg).map_err(CoreError::Config)?;
        let l_to_ab = try_build_encoder(&(p / "l_to_ab"), &half, 1)?;
        let ab_to_l = try_build_encoder(&(p / "ab_to_l"), &half, 2)?;
        Ok(SplitEncoder { l_to_ab, ab_to_l, features: SplitFeatures::Both })
    }

    /// The same halves, exposing `features` at the taps.
    pub fn with_features(self, features: SplitFeatures) -> Self {
        SplitEncoder { features, ..self }
    }

    /// What the taps expose.
    pub fn features(&self) -> SplitFeatures {
        self.features
    }

    /// The taps of the halves [`Self::features`] selects, given each half's computation.
    fn select(
        &self,
        xs: &Tensor,
        run: impl Fn(&dyn Encoder, &Tensor) -> Vec<(String, Tensor)>,
    ) -> Vec<(String, Tensor)> {
        let (l, ab) = Self::inputs(&Self::lab(xs));
        match self.features {
            SplitFeatures::Both => Self::concat(run(&*self.l_to_ab, &l), run(&*self.ab_to_l, &ab)),
            SplitFeatures::LToAb => run(&*self.l_to_ab, &l),
            SplitFeatures::AbToL => run(&*self.ab_to_l, &ab),
        }
    }

    /// The half that sees L.
    pub fn l_to_ab(&self) -> &dyn Encoder {
        &*self.l_to_ab
    }

    /// The half that sees ab.
    pub fn ab_to_l(&self) -> &dyn Encoder {
        &*self.ab_to_l
    }

    /// Each half's input from Lab images: `(L / 50 − 1, ab / 110)`.
    ///
    /// # Shapes
    /// `lab`: `(N, 3, H, W)`; returns `(N, 1, H, W)` and `(N, 2, H, W)`.
    pub fn inputs(lab: &Tensor) -> (Tensor, Tensor) {
        (l_input(&lab.narrow(1, 0, 1)), ab_input(&lab.narrow(1, 1, 2)))
    }

    /// Lab of images in `[0, 1]` (a gray image is taken as R = G = B).
    ///
    /// # Panics
    /// On images that are not `(N, 3, H, W)` or `(N, 1, H, W)`.
    fn lab(xs: &Tensor) -> Tensor {
        let s = xs.size();
        let rgb = if s.len() == 4 && s[1] == 1 {
            xs.expand([s[0], 3, s[2], s[3]], true)
        } else {
            xs.shallow_clone()
        };
        rgb_to_lab(&rgb).unwrap_or_else(|e| panic!("split-brain encoder: {e}"))
    }

    fn concat(l: Vec<(String, Tensor)>, ab: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
        l.into_iter().zip(ab).map(|((n, x), (_, y))| (n, Tensor::cat(&[x, y], 1))).collect()
    }
}

impl ModuleT for SplitEncoder {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (l, ab) = Self::inputs(&Self::lab(xs));
        match self.features {
            SplitFeatures::Both => Tensor::cat(
                &[self.l_to_ab.forward_t(&l, train), self.ab_to_l.forward_t(&ab, train)],
                1,
            ),
            SplitFeatures::LToAb => self.l_to_ab.forward_t(&l, train),
            SplitFeatures::AbToL => self.ab_to_l.forward_t(&ab, train),
        }
    }
}

impl Encoder for SplitEncoder {
    fn tap_names(&self) -> Vec<String> {
        self.l_to_ab.tap_names()
    }

    fn features_t(&self, xs: &Tensor, train: bool) -> Vec<(String, Tensor)> {
        self.select(xs, |half, x| half.features_t(x, train))
    }

    fn features_upto_t(&self, xs: &Tensor, tap: &str, train: bool) -> Vec<(String, Tensor)> {
        self.select(xs, |half, x| half.features_upto_t(x, tap, train))
    }

    fn out_channels(&self) -> i64 {
        match self.features {
            SplitFeatures::Both => self.l_to_ab.out_channels() + self.ab_to_l.out_channels(),
            SplitFeatures::LToAb => self.l_to_ab.out_channels(),
            SplitFeatures::AbToL => self.ab_to_l.out_channels(),
        }
    }
}
