//! SimCLR (Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of
//! Visual Representations", ICML 2020), after the paper's Algorithm 1 and the official code
//! (google-research/simclr).
//!
//! - [`SimClrConfig`]: temperature, projection head, micro-batching (gradient caching) and
//!   views, with the paper's CIFAR-10 defaults;
//! - [`SimClr`]: the [`PretextMethod`] (two views, encoder + projection MLP, NT-Xent);
//! - [`recommended_train_config`] ([`recommended_optimizer`], [`recommended_schedule`]): LARS
//!   at `0.3 × B / 256` with warm-up and cosine decay;
//! - [`register`]: adds `simclr` to a [`Registry`].
//!
//! The losses, the head and gradient caching live in `selfsup-contrastive` (shared with MoCo).
#![deny(missing_docs)]

pub mod method;

pub use method::{
    recommended_optimizer, recommended_schedule, recommended_train_config, SimClr, SimClrConfig,
};

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(SimClrConfig::default()).expect("SimClrConfig serializes to JSON")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: SimClrConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("simclr method_config: {e}")))?;
    Ok(Box::new(SimClr::new(root, cfg, ctx)?))
}

/// Registers `simclr` (config: [`SimClrConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "simclr",
        description: "SimCLR: NT-Xent between two augmented views (Chen et al., ICML 2020)",
        default_config,
        build,
    });
}
