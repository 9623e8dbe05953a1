//! Split-brain autoencoders (Zhang, Isola, Efros, "Split-Brain Autoencoders: Unsupervised
//! Learning by Cross-Channel Prediction", CVPR 2017): a network split by channels into two
//! halves, one predicting the ab channels of a Lab image from L, the other L from ab; the
//! representation is both halves' features concatenated.
//!
//! - [`config`]: the method config (classification by default, regression as an option);
//! - [`encoder`]: [`SplitEncoder`], two half-width trunks whose taps are concatenated;
//! - [`method`]: the method as a [`PretextMethod`](selfsup_core::PretextMethod);
//! - [`register`]: adds `split-brain` to a [`Registry`].
//!
//! Lab, the ab and L bins and the soft encoding come from `selfsup-lab`; the dense head and the
//! soft cross-entropy from `selfsup-colorization`, whose error type this crate shares.
#![deny(missing_docs)]

pub mod config;
pub mod encoder;
pub mod method;

pub use config::{SplitBrainConfig, SplitFeatures, SplitLoss};
pub use encoder::SplitEncoder;
pub use method::SplitBrain;

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(SplitBrainConfig::default()).expect("SplitBrainConfig serializes")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: SplitBrainConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("split-brain method_config: {e}")))?;
    Ok(Box::new(SplitBrain::new(root, cfg, ctx)?))
}

/// Registers `split-brain` (config: [`SplitBrainConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "split-brain",
        description: "Split-brain autoencoders: two half networks predict ab from L and L from \
                      ab; features of both concatenated (Zhang, Isola, Efros, CVPR 2017)",
        default_config,
        build,
    });
}
