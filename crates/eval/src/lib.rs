//! Evaluation of frozen (and fine-tuned) encoders, the way the self-supervised papers score
//! them: layer-wise linear probes on ~9k-dimensional pooled taps (Zhang et al. 2017, RotNet),
//! RotNet's non-linear probes on block features, a weighted kNN (InstDisc), few-label training
//! (RotNet's semi-supervised table), and baselines (random init; the supervised method lives in
//! `selfsup-supervised`).
//!
//! Every protocol takes an [`Encoder`](selfsup_core::Encoder), the device its variables live
//! on, labeled train and test [`ImageDataset`](selfsup_data::ImageDataset)s, a serde config
//! with documented defaults and a seed, and returns an [`EvalReport`] whose
//! [`EvalReport::write`] produces `<out>/eval/<protocol>.json` and `.md`. [`run_protocol`]
//! dispatches by name with a JSON config, for the CLI. During pretraining, [`knn_monitor`] is a
//! cheap progress signal.
//!
//! In a deterministic CPU run (oneDNN off: `selfsup eval` by default, a reproduction by its plan)
//! the protocols that train give the same bits at any thread count: the non-linear heads'
//! convolutions and the fine-tuned encoder take `selfsup_core`'s fixed pieces, every fully
//! connected product (the heads', the linear probes') `selfsup_core::encoders::affine`'s fixed
//! blocks, and kNN's similarities `selfsup_core::encoders::product`'s. Each report records
//! whether the run was deterministic and its thread count.
#![deny(missing_docs)]

pub mod baselines;
pub mod end_to_end;
pub mod error;
pub mod features;
pub mod fewshot;
pub mod knn;
pub mod linear;
pub mod nonlinear;
pub mod probe;
pub mod protocol;
pub mod report;

pub use end_to_end::{end_to_end, EndToEndConfig};
pub use error::{EvalError, Result};
pub use features::{Normalization, Pooling};
pub use fewshot::{fewshot, FewShotConfig, LabelBudget};
pub use knn::{knn_monitor, knn_probe, knn_probe_embedding, KnnConfig};
pub use linear::{linear_probe, LinearProbeConfig, ResizedCrop};
pub use nonlinear::{nonlinear_probe, HeadKind, NonLinearProbeConfig};
pub use protocol::{run_protocol, Protocol};
pub use report::{BestEpoch, EvalReport, ResultRow};
