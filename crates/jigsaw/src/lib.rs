//! Jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual Representations by
//! Solving Jigsaw Puzzles", ECCV 2016): learn features by telling which of a fixed set of
//! permutations shuffled the nine tiles of an image. Follows the paper and the official
//! PyTorch code (bbrattoli/JigsawPuzzlePytorch).
//!
//! - [`permutations`]: the permutation set by the paper's Algorithm 1 (greedy maximal Hamming
//!   distance), seeded; it is stored with the checkpoint and reused;
//! - [`puzzle`]: puzzles from a batch on tensors: 3×3 cells, one tile per cell at a random
//!   position (gaps and jitter), per-tile colour jitter and normalisation, the tiles put in the
//!   slots of a permutation;
//! - [`config`]: the method config, official defaults, every shortcut countermeasure on by
//!   default and each one switchable;
//! - [`method`]: the context-free network as a [`PretextMethod`](selfsup_core::PretextMethod);
//! - [`register`]: adds `jigsaw` to a [`Registry`].
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod method;
pub mod permutations;
pub mod puzzle;

pub use config::{JigsawConfig, Pool5Op};
pub use error::JigsawError;
pub use method::Jigsaw;

use selfsup_core::{BuildContext, CoreError, MethodEntry, PretextMethod, Registry};
use tch::nn;

fn default_config() -> serde_json::Value {
    serde_json::to_value(JigsawConfig::default()).expect("JigsawConfig serializes to JSON")
}

fn build(
    root: &nn::Path,
    config: &serde_json::Value,
    ctx: &BuildContext,
) -> selfsup_core::Result<Box<dyn PretextMethod>> {
    let cfg: JigsawConfig = serde_json::from_value(config.clone())
        .map_err(|e| CoreError::Config(format!("jigsaw method_config: {e}")))?;
    Ok(Box::new(Jigsaw::new(root, cfg, ctx)?))
}

/// Registers `jigsaw` (config: [`JigsawConfig`]).
pub fn register(r: &mut Registry) {
    r.register(MethodEntry {
        name: "jigsaw",
        description: "Jigsaw puzzles: tell the permutation of nine shuffled tiles (Noroozi & \
                      Favaro, ECCV 2016)",
        default_config,
        build,
    });
}
