//! Instance discrimination (Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via
//! Non-Parametric Instance Discrimination", CVPR 2018), after the official code
//! (zhirongw/lemniscate.pytorch: `lib/NCEAverage.py`, `lib/NCECriterion.py`,
//! `lib/LinearAverage.py`).
//!
//! Every training image is its own class. A memory bank holds one L2-normalised 128-d vector
//! per image; the probability that feature `v` is image `i` is the non-parametric softmax
//! `exp(m_i·v/τ) / Z`. It is trained with NCE against 4,096 noise images drawn uniformly (Z
//! estimated once from the first batch, as the paper) or with the full softmax over the bank.
//! After each step the bank rows of the batch move toward the new features with momentum 0.5.
//!
//! - [`InstDiscConfig`]: the settings (paper defaults);
//! - [`memory`]: the memory bank and the NCE loss;
//! - [`InstanceDiscrimination`]: the [`PretextMethod`];
//! - [`register`]: adds `instance-discrimination` to a [`Registry`].
#![deny(missing_docs)]

pub mod config;
pub mod memory;
pub mod method;

pub use config::{InstDiscConfig, Objective};
pub use memory::{nce_loss, MemoryBank};
pub use method::InstanceDiscrimination;

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(InstDiscConfig::default()).expect("InstDiscConfig serializes to JSON")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: InstDiscConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("instance-discrimination method_config: {e}")))?;
    Ok(Box::new(InstanceDiscrimination::new(root, cfg, ctx)?))
}

/// Registers `instance-discrimination` (config: [`InstDiscConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "instance-discrimination",
        description: "Instance discrimination: non-parametric softmax over a memory bank with NCE (Wu et al., CVPR 2018)",
        default_config,
        build,
    });
}
