//! Context encoders (Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature
//! Learning by Inpainting", CVPR 2016): learn features by filling in a hidden region of an image
//! from its context. Follows the paper and the official code (pathak22/context-encoder,
//! `train.lua`, `train_random.lua`).
//!
//! - [`config`]: the method config: mask, overlap border and its weight, the loss weights
//!   λ_rec = 0.999 and λ_adv = 0.001, the discriminator and its optimizer;
//! - [`bottleneck`]: the channel-wise fully connected layer between encoder and decoder;
//! - [`discriminator`]: the adversarial discriminator, under `discriminator.`;
//! - [`method`]: encoder, bottleneck and decoder as a
//!   [`PretextMethod`], the discriminator trained alternately by
//!   its own optimizer (the core's extra optimizers);
//! - [`register`]: adds `context-encoder` to a [`Registry`].
//!
//! The masks, their mean fill and the overlap border are [`selfsup_data::masks`]; the decoder
//! is [`selfsup_reconstruction::UpDecoder`].
#![deny(missing_docs)]

pub mod bottleneck;
pub mod config;
pub mod discriminator;
pub mod error;
pub mod method;

pub use config::ContextEncoderConfig;
pub use error::ContextEncoderError;
pub use method::ContextEncoder;

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(ContextEncoderConfig::default()).expect("ContextEncoderConfig serializes")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: ContextEncoderConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("context-encoder method_config: {e}")))?;
    Ok(Box::new(ContextEncoder::new(root, cfg, ctx)?))
}

/// Registers `context-encoder` (config: [`ContextEncoderConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "context-encoder",
        description: "Context encoders: inpaint a hidden region from its context, with an \
                      adversarial loss (Pathak et al., CVPR 2016)",
        default_config,
        build,
    });
}
