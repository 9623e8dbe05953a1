//! Colorization (Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016) as a pretext
//! task: learn features by predicting the ab channels of an image from its lightness L, as a
//! distribution over quantised ab bins with a class-rebalanced loss. Follows the paper and the
//! official code (richzhang/colorization, `caffe_traininglayers.py`).
//!
//! - [`config`]: the method config, the paper's defaults;
//! - [`net`]: the encoder wrapper that feeds the trunk L from RGB images ([`LInput`]), the light
//!   dense head and the soft cross-entropy (shared with split-brain);
//! - [`method`]: the method as a [`PretextMethod`](selfsup_core::PretextMethod), writing
//!   colourised samples after each epoch;
//! - [`pictures`]: the PNG grid of samples;
//! - [`register`]: adds `colorization` to a [`Registry`].
//!
//! The colour space and its quantisation (Lab, the ab bins, soft encoding, rebalancing,
//! annealed mean) live in `selfsup-lab`.
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod method;
pub mod net;
pub mod pictures;

pub use config::ColorizationConfig;
pub use error::ColorizationError;
pub use method::{observe_prior, Colorization};
pub use net::LInput;

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(ColorizationConfig::default()).expect("ColorizationConfig serializes")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: ColorizationConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("colorization method_config: {e}")))?;
    Ok(Box::new(Colorization::new(root, cfg, ctx)?))
}

/// Registers `colorization` (config: [`ColorizationConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "colorization",
        description: "Colorization: predict the ab colours of an image from its lightness, as \
                      classes over quantised ab (Zhang, Isola, Efros, ECCV 2016)",
        default_config,
        build,
    });
}
