//! Relative patch position, or context prediction (Doersch, Gupta, Efros, "Unsupervised
//! Visual Representation Learning by Context Prediction", ICCV 2015): learn features by telling
//! where one patch sits relative to another, among its eight neighbours on a 3×3 grid. Follows
//! the paper and the official code (cdoersch/deepcontext).
//!
//! - [`pairs`]: patch pairs from a batch on tensors (the shared patch grid of
//!   `selfsup_data`, with gap and jitter), colour dropping or green-magenta projection against
//!   chromatic aberration, per-patch normalisation;
//! - [`config`]: the method config, the paper's defaults, every shortcut countermeasure on by
//!   default and each one switchable;
//! - [`method`]: the late-fusion pair network as a
//!   [`PretextMethod`](selfsup_core::PretextMethod);
//! - [`register`]: adds `relative-patch` to a [`Registry`].
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod method;
pub mod pairs;

pub use config::{ColorShortcut, RelativePatchConfig};
pub use error::RelativePatchError;
pub use method::RelativePatch;

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(RelativePatchConfig::default())
        .expect("RelativePatchConfig serializes to JSON")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: RelativePatchConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("relative-patch method_config: {e}")))?;
    Ok(Box::new(RelativePatch::new(root, cfg, ctx)?))
}

/// Registers `relative-patch` (config: [`RelativePatchConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "relative-patch",
        description: "Relative patch position: where a patch sits among its neighbour's eight \
                      (Doersch et al., ICCV 2015)",
        default_config,
        build,
    });
}
