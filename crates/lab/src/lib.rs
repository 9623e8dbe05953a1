//! CIE Lab on tensors and the quantised colour spaces of the cross-channel prediction methods:
//! colorization (Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016) and split-brain
//! autoencoders (Zhang, Isola, Efros, "Split-Brain Autoencoders", CVPR 2017).
//!
//! A crate of its own rather than a module of `selfsup-data`: the data crate reads datasets and
//! augments `u8` images pixel by pixel on the loader's threads, while everything here runs on
//! batches as tensor ops inside a method's step (on the GPU when the run is there) and is the
//! methods' loss machinery (bins, soft targets, rebalancing weights, decoding), shared by two
//! method crates and by nothing else. It depends on `tch` alone, so it builds and tests in
//! seconds.
//!
//! - [`color`]: sRGB ↔ CIE Lab (D65), exact (the sRGB transfer curve, the XYZ matrix of the
//!   sRGB primaries, the CIE ε and κ), on `(N, 3, H, W)` tensors;
//! - [`quant`]: the ab plane quantised on a grid of 10 into the bins reached by sRGB colours
//!   ([`AbBins::in_gamut`], computed, not typed in), the soft encoding of a target over its
//!   nearest bins, annealed-mean decoding, and L quantised into equal bins ([`LBins`]);
//! - [`rebalance`]: class-rebalancing weights from the smoothed empirical distribution mixed
//!   with the uniform one, and a running histogram to estimate that distribution from training
//!   batches ([`Prior`]).
#![deny(missing_docs)]

pub mod color;
pub mod quant;
pub mod rebalance;

pub use color::{lab_to_rgb, lightness, rgb_to_lab};
pub use quant::{annealed_mean, AbBins, LBins};
pub use rebalance::{rebalance_weights, Prior};

/// Errors of this crate; messages name the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A tensor whose shape does not fit (`"rgb has shape [2, 4, 8, 8], expected (N, 3, H, W)"`).
    #[error("{0}")]
    Shape(String),
    /// A parameter out of its range (`"neighbours = 0 ..."`).
    #[error("{0}")]
    Value(String),
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, LabError>;
