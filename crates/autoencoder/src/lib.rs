//! The denoising autoencoder (Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing
//! Robust Features with Denoising Autoencoders", ICML 2008), convolutional: the trunk encodes a
//! corrupted image, an up-convolution decoder reconstructs the clean one, and the loss is the
//! squared error to the clean image. The corruptions are the paper's masking noise and the
//! Gaussian and salt-and-pepper noise of its JMLR 2010 sequel ([`selfsup_data::masks`]).
//!
//! - [`config`]: the method config: corruption type and level, decoder width, pixel statistics;
//! - [`method`]: the autoencoder as a [`PretextMethod`](selfsup_core::PretextMethod);
//! - [`register`]: adds `autoencoder` to a [`Registry`].
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod method;

pub use config::AutoencoderConfig;
pub use error::AutoencoderError;
pub use method::Autoencoder;

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(AutoencoderConfig::default()).expect("AutoencoderConfig serializes")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: AutoencoderConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("autoencoder method_config: {e}")))?;
    Ok(Box::new(Autoencoder::new(root, cfg, ctx)?))
}

/// Registers `autoencoder` (config: [`AutoencoderConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "autoencoder",
        description: "Denoising autoencoder: reconstruct the clean image from a corrupted one \
                      (Vincent et al., ICML 2008)",
        default_config,
        build,
    });
}
