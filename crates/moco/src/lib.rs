//! MoCo: momentum contrast (He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised
//! Visual Representation Learning", CVPR 2020) and MoCo v2 (Chen, Fan, Girshick, He,
//! "Improved Baselines with Momentum Contrastive Learning", 2020), after the official code
//! (facebookresearch/moco, `moco/builder.py`) and its CIFAR-10 demo (`colab/moco_cifar10_demo`).
//!
//! - [`MocoConfig`]: version, momentum, queue size, temperature, head, symmetric loss, the
//!   one-device replacement of Shuffling BN;
//! - [`queue`]: the queue of keys with its pointer;
//! - [`momentum`]: the key network, a frozen momentum copy of the query network;
//! - [`Moco`]: the [`PretextMethod`];
//! - [`register`]: adds `moco` to a [`Registry`].
#![deny(missing_docs)]

pub mod config;
pub mod method;
pub mod momentum;
pub mod queue;

pub use config::{HeadChoice, MocoConfig, MocoVersion};
pub use method::Moco;
pub use momentum::MomentumEncoder;
pub use queue::KeyQueue;

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(MocoConfig::default()).expect("MocoConfig serializes to JSON")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: MocoConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("moco method_config: {e}")))?;
    Ok(Box::new(Moco::new(root, cfg, ctx)?))
}

/// Registers `moco` (config: [`MocoConfig`]; `version` selects v1 or v2).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "moco",
        description:
            "MoCo v1/v2: InfoNCE against a queue of momentum-encoded keys (He et al., CVPR 2020)",
        default_config,
        build,
    });
}
