//! Shared parts of the reconstruction pretext methods, the denoising autoencoder (Vincent et al.,
//! ICML 2008; `selfsup-autoencoder`) and the context encoder (Pathak et al., CVPR 2016;
//! `selfsup-context-encoder`):
//!
//! - [`decoder`]: the up-convolution decoder (transposed convolutions + BN + ReLU) from the
//!   trunk's last feature map back to the image;
//! - [`samples`]: PNG grids of sample reconstructions, written into the run folder every few
//!   epochs;
//! - [`PixelStats`]: the per-channel normalisation both methods apply inside their step (they
//!   corrupt or mask pixel values in `[0, 1]` first) and undo for the grids;
//! - [`feature_shape`]: the shape of the trunk's last feature map, which sizes the decoder.
//!
//! Why a crate of its own: the decoder and the grids serve these two methods only (the
//! encoders in `selfsup-core` serve every method, and the core is kept to what the trainer
//! needs), and the masks and corruptions, which are pure data transforms, live in
//! `selfsup_data::masks`. The same split as `selfsup-contrastive` for the contrastive methods.
#![deny(missing_docs)]

pub mod decoder;
pub mod error;
pub mod samples;

pub use decoder::UpDecoder;
pub use error::ReconstructionError;
pub use samples::SampleGrid;

use selfsup_core::Encoder;
use tch::{Device, Kind, Tensor};

/// Per-channel pixel statistics, `x ↦ (x − mean) / std` on values in `[0, 1]`.
#[derive(Debug)]
pub struct PixelStats {
    mean: Tensor,
    std: Tensor,
}

impl PixelStats {
    /// The statistics for `channels`-channel images on `device`; an error names the field at
    /// fault (`mean`, `std`).
    pub fn new(
        mean: &[f32],
        std: &[f32],
        channels: i64,
        device: Device,
    ) -> Result<Self, ReconstructionError> {
        if mean.len() as i64 != channels || std.len() as i64 != channels {
            return Err(ReconstructionError::Config(format!(
                "mean has {} and std {} entries but the images have {channels} channels; set \
                 method_config.mean and method_config.std",
                mean.len(),
                std.len()
            )));
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(ReconstructionError::Config(format!("std entry {s} is not positive")));
        }
        let t = |v: &[f32]| Tensor::from_slice(v).view([1, channels, 1, 1]).to_device(device);
        Ok(PixelStats { mean: t(mean), std: t(std) })
    }

    /// Normalised images.
    ///
    /// # Shapes
    /// `(B, C, H, W)` → `(B, C, H, W)`.
    pub fn normalize(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.std
    }

    /// Pixel values back from normalised images (not clamped).
    ///
    /// # Shapes
    /// `(B, C, H, W)` → `(B, C, H, W)`.
    pub fn denormalize(&self, x: &Tensor) -> Tensor {
        x.to_kind(Kind::Float) * &self.std + &self.mean
    }
}

/// The shape `[C, h, w]` of `encoder`'s last feature map for `channels × side × side` images:
/// one forward pass of a zero image in eval mode without gradient, so no batch-norm statistic
/// moves and no random number is drawn. An encoder that cannot take such images is an error
/// naming the side.
pub fn feature_shape(
    encoder: &dyn Encoder,
    channels: i64,
    side: i64,
    device: Device,
) -> Result<[i64; 3], ReconstructionError> {
    let x = Tensor::zeros([1, channels, side, side], (Kind::Float, device));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tch::no_grad(|| encoder.forward_t(&x, false))
    }))
    .map_err(|_| {
        ReconstructionError::Config(format!(
            "the encoder does not take {side}x{side} images (its feature map would be empty)"
        ))
    })?;
    match out.size().as_slice() {
        &[1, c, h, w] if h > 0 && w > 0 => Ok([c, h, w]),
        other => Err(ReconstructionError::Config(format!(
            "the encoder gives a feature map of shape {other:?} for {side}x{side} images"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_core::encoders::{build_encoder, AlexnetVariant};
    use selfsup_core::EncoderConfig;
    use tch::nn;

    #[test]
    fn pixel_stats_round_trip_and_name_the_bad_field() {
        let s = PixelStats::new(&[0.5, 0.25], &[0.5, 2.0], 2, Device::Cpu).unwrap();
        let x = Tensor::from_slice(&[1.0f32, 0.25]).view([1, 2, 1, 1]);
        let n = s.normalize(&x);
        assert_eq!(Vec::<f32>::try_from(n.flatten(0, -1)).unwrap(), [1.0, 0.0]);
        assert!(s.denormalize(&n).equal(&x));
        let e = PixelStats::new(&[0.5], &[0.5], 3, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("mean has 1 and std 1 entries but the images have 3"), "{e}");
        let e = PixelStats::new(&[0.5], &[0.0], 1, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("std entry 0 is not positive"), "{e}");
    }

    #[test]
    fn feature_shapes_of_the_test_encoders() {
        let vs = nn::VarStore::new(Device::Cpu);
        let alex = EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 4 };
        let enc = build_encoder(&(vs.root() / "a"), &alex, 3);
        let copy = || -> Vec<Tensor> {
            selfsup_core::checkpoint::sorted_variables(&vs).iter().map(|(_, t)| t.copy()).collect()
        };
        let before = copy();
        assert_eq!(feature_shape(&*enc, 3, 32, Device::Cpu).unwrap(), [11, 8, 8]);
        assert!(before.iter().zip(&copy()).all(|(a, b)| a.equal(b)), "nothing moves");
        let tiny = build_encoder(
            &(vs.root() / "t"),
            &EncoderConfig::Tiny { width: 4, batch_norm: true },
            1,
        );
        assert_eq!(feature_shape(&*tiny, 1, 32, Device::Cpu).unwrap(), [8, 16, 16]);
    }
}
