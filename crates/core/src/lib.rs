//! Core of selfsup: encoders with named feature taps, the [`PretextMethod`] trait, the method
//! [`Registry`], the trainer with its optimizers and schedules, and checkpoints.
//!
//! The split follows burn's learner: the trainer owns the loop, the optimizers, checkpoints and
//! logging; a method owns only how a batch becomes a loss (plus hooks such as MoCo's momentum
//! update).
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod determinism;
pub mod device;
pub mod encoders;
pub mod error;
pub mod export;
pub mod host;
pub mod method;
pub mod op_counts;
pub mod ops;
pub mod optim;
pub mod precision;
pub mod reduce;
pub mod registry;
pub mod schedule;
pub mod seed;
pub mod signals;
pub mod stage;
pub mod trainer;

#[cfg(test)]
mod test_python;

pub use encoders::{build_encoder, Encoder, EncoderConfig};
pub use error::{CoreError, Result};
pub use method::{BuildContext, InputNormalization, PretextMethod, StepOutput};
pub use registry::{MethodEntry, Registry};
