//! RotNet (Gidaris, Singh, Komodakis, ICLR 2018): learn features by predicting which rotation
//! was applied to an image. Follows the official code, gidariss/FeatureLearningRotNet.
//!
//! - [`rotate`]: exact right-angle rotations and bilinear 45° rotations of `(B, C, H, W)` batches,
//!   and the batch of all rotations of every image with its labels;
//! - [`config`]: the method config (`rotations`: `four` | `eight` | `two_0_180` | `two_90_270`,
//!   data view settings), defaults from the official CIFAR-10 config;
//! - [`method`]: the [`PretextMethod`](selfsup_core::PretextMethod) implementation;
//! - [`register`]: adds `rotnet` to a [`Registry`].
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod method;
pub mod rotate;

pub use config::{RotNetConfig, RotationSet};
pub use error::RotNetError;
pub use method::RotNet;
pub use rotate::{rotate, rotation_batch, CornerFill};

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(RotNetConfig::default()).expect("RotNetConfig serializes to JSON")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: RotNetConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("rotnet method_config: {e}")))?;
    Ok(Box::new(RotNet::new(root, cfg, ctx)?))
}

/// Registers `rotnet` (config: [`RotNetConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "rotnet",
        description: "RotNet: predict the rotation applied to an image (Gidaris et al., ICLR 2018)",
        default_config,
        build,
    });
}
