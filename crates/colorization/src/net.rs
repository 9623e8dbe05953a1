//! The parts of the cross-channel networks of Zhang et al. (colorization, ECCV 2016;
//! split-brain, CVPR 2017) that sit around the trunk: the encoder wrapper that turns RGB images
//! into the trunk's Lab input, the light dense head, and the per-pixel soft cross-entropy.
//!
//! Evaluation feeds every encoder RGB images (normalised as the method's
//! [`input_normalization`](selfsup_core::PretextMethod::input_normalization) says; these methods
//! say "none": pixels in `[0, 1]`). [`LInput`] therefore converts RGB to L inside the encoder, so
//! a probe on a colorization encoder sees exactly what pretraining saw, the lightness, and the
//! trunk keeps its one input channel.
use selfsup_core::encoders::conv::Conv2d;
use selfsup_core::encoders::{batch_norm2d, BatchNorm, Encoder};
use selfsup_core::method::first_largest;
use selfsup_core::reduce::mean_all;
use selfsup_lab::lightness;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// The trunk's input from lightness: `L / 50 − 1`, in `[-1, 1]` (the official code feeds
/// `L − 50`; the scale is what the batch norm after conv1 removes).
pub fn l_input(l: &Tensor) -> Tensor {
    l / 50.0 - 1.0
}

/// The trunk's input from ab: `ab / 110`, in about `[-1, 1]`.
pub fn ab_input(ab: &Tensor) -> Tensor {
    ab / 110.0
}

/// A one-channel trunk that takes RGB (or gray) images in `[0, 1]` and sees their lightness:
/// the colorization encoder as evaluation uses it. Its variables are the trunk's (`conv1`
/// has one input channel).
///
/// # Shapes
/// Input `(N, 3, H, W)` or `(N, 1, H, W)` in `[0, 1]`; taps as the trunk's.
#[derive(Debug)]
pub struct LInput {
    trunk: Box<dyn Encoder>,
}

impl LInput {
    /// Wraps a trunk built for one input channel.
    pub fn new(trunk: Box<dyn Encoder>) -> Self {
        LInput { trunk }
    }

    /// The trunk itself (fed [`l_input`] values).
    pub fn trunk(&self) -> &dyn Encoder {
        &*self.trunk
    }

    /// The trunk's input for images in `[0, 1]`.
    ///
    /// # Panics
    /// On images that are not `(N, 3, H, W)` or `(N, 1, H, W)`.
    pub fn prepare(&self, xs: &Tensor) -> Tensor {
        let l = lightness(xs).unwrap_or_else(|e| panic!("colorization encoder: {e}"));
        l_input(&l)
    }
}

impl ModuleT for LInput {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.trunk.forward_t(&self.prepare(xs), train)
    }
}

impl Encoder for LInput {
    fn tap_names(&self) -> Vec<String> {
        self.trunk.tap_names()
    }

    fn features_t(&self, xs: &Tensor, train: bool) -> Vec<(String, Tensor)> {
        self.trunk.features_t(&self.prepare(xs), train)
    }

    fn features_upto_t(&self, xs: &Tensor, tap: &str, train: bool) -> Vec<(String, Tensor)> {
        self.trunk.features_upto_t(&self.prepare(xs), tap, train)
    }

    fn out_channels(&self) -> i64 {
        self.trunk.out_channels()
    }
}

/// The light dense head: a 1 × 1 conv to `width` channels, batch norm, ReLU, a 1 × 1 conv to
/// `classes`, and a bilinear resize to the target resolution. (The official colorization
/// network ends in three 3 × 3 convs at 256 channels and a 1 × 1 conv to 313; the trunk here
/// is the encoder being evaluated, and the head is kept small.)
#[derive(Debug)]
pub struct DenseHead {
    hidden: Conv2d,
    bn: BatchNorm,
    out: Conv2d,
}

impl DenseHead {
    /// Builds `hidden`, `bn` and `out` under `p`.
    pub fn new(p: &nn::Path, in_channels: i64, width: i64, classes: i64) -> Self {
        let hidden = Conv2d::head(p / "hidden", in_channels, width, 1, Default::default());
        let bn = batch_norm2d(p / "bn", width);
        let out = Conv2d::head(p / "out", width, classes, 1, Default::default());
        DenseHead { hidden, bn, out }
    }

    /// Per-location class scores at `size`.
    ///
    /// # Shapes
    /// `feats`: `(N, C, h, w)`; returns `(N, classes, size[0], size[1])`.
    pub fn forward_t(&self, feats: &Tensor, size: [i64; 2], train: bool) -> Tensor {
        // Batch norm + ReLU through the fused kernel where it applies (training on the CPU).
        let y = self.bn.forward_relu_t(&feats.apply(&self.hidden), train).apply(&self.out);
        let s = y.size();
        if [s[2], s[3]] == size {
            y
        } else {
            y.upsample_bilinear2d(size, false, None, None)
        }
    }
}

/// The per-pixel cross-entropy against soft targets, each pixel weighted (Eq. 2):
/// `mean over pixels of w · (−Σ_q z_q log softmax(logits)_q)`, computed in f32.
///
/// # Shapes
/// `logits`, `targets`: `(N, Q, H, W)`; `weights`: `(N, H, W)` or `None` (all 1); returns a
/// scalar.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor, weights: Option<&Tensor>) -> Tensor {
    let log_p = logits.log_softmax(1, Kind::Float);
    let ce = -(log_p * targets).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    match weights {
        Some(w) => mean_all(&(ce * w)),
        None => mean_all(&ce),
    }
}

/// The fraction of pixels whose top-scoring class is the target class (`argmax`'s, see
/// [`first_largest`]).
///
/// # Shapes
/// `logits`: `(N, Q, H, W)`; `classes`: `(N, H, W)` i64.
pub fn pixel_accuracy(logits: &Tensor, classes: &Tensor) -> Tensor {
    let top = first_largest(logits, 1)
        .unwrap_or_else(|e| panic!("top class of logits {:?}: {e}", logits.size()));
    tch::no_grad(|| top.eq_tensor(classes).to_kind(Kind::Float).mean(Kind::Float))
}
