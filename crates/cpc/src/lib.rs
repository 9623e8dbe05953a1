//! Contrastive predictive coding on images (van den Oord, Li, Vinyals, "Representation Learning
//! with Contrastive Predictive Coding", 2018, §3.2; Hénaff et al., "Data-Efficient Image
//! Recognition with Contrastive Predictive Coding", CPC v2, 2019): predict the embeddings of
//! the patches below from a row-causal context of the patches above, scored by InfoNCE.
//!
//! - [`config`]: the method config, CPC v2's ImageNet geometry as defaults (scale `crop`,
//!   `patch`, `stride` to the data);
//! - [`method`]: patch grids, per-patch augmentation, the row-causal context network, the
//!   predictors and InfoNCE as a [`PretextMethod`](selfsup_core::PretextMethod);
//! - [`register`]: adds `cpc` to a [`Registry`].
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod method;

pub use config::CpcConfig;
pub use error::CpcError;
pub use method::{info_nce, Cpc};

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(CpcConfig::default()).expect("CpcConfig serializes to JSON")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: CpcConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("cpc method_config: {e}")))?;
    Ok(Box::new(Cpc::new(root, cfg, ctx)?))
}

/// Registers `cpc` (config: [`CpcConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "cpc",
        description: "CPC: predict patch embeddings below from a row-causal context, InfoNCE \
                      (van den Oord et al. 2018; Hénaff et al. 2019)",
        default_config,
        build,
    });
}
