//! Building blocks shared by the contrastive methods (SimCLR, MoCo):
//!
//! - [`loss`]: NT-Xent (Chen et al. 2020, Algorithm 1) and InfoNCE over a queue of negatives
//!   (He et al. 2020, Algorithm 1), both the cross-entropy of an N-way softmax over cosine
//!   similarities divided by a temperature;
//! - [`head`]: the projection MLP put on top of the pooled encoder features;
//! - [`grad_cache`]: exact large-batch losses from micro-batches by gradient caching
//!   (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
//!   Setup"); batch norm still sees each micro-batch's own statistics;
//! - [`views`]: the default augmentation views (SimCLR's, MoCo v1's);
//! - [`pooled`]: global average pooling of an encoder's last feature map.
#![deny(missing_docs)]

pub mod grad_cache;
pub mod head;
pub mod loss;
pub mod views;

use tch::Tensor;

/// Errors of the contrastive building blocks.
#[derive(Debug, thiserror::Error)]
pub enum ContrastiveError {
    /// A tensor whose shape does not fit the operation; the message names the tensor and shape.
    #[error("shape: {0}")]
    Shape(String),
    /// A batch with the wrong number of views for the method.
    #[error("batch has {got} views, the method needs {expected}")]
    Views {
        /// Views the method asked for.
        expected: usize,
        /// Views in the batch.
        got: usize,
    },
    /// A setting out of range (a temperature that is not positive, say).
    #[error("config: {0}")]
    Config(String),
    /// Method state (key encoder, queue, memory bank) that cannot be restored; the message
    /// names the entry.
    #[error("method state: {0}")]
    State(String),
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A collective of a data-parallel job that failed (a rank gone, a shape that differs).
    #[error("{0}")]
    Dist(#[from] selfsup_dist::DistError),
}

impl From<ContrastiveError> for selfsup_core::CoreError {
    fn from(e: ContrastiveError) -> Self {
        match e {
            ContrastiveError::Torch(t) => selfsup_core::CoreError::Torch(t),
            ContrastiveError::Dist(d) => selfsup_core::CoreError::Dist(d),
            ContrastiveError::Config(m) => selfsup_core::CoreError::Config(m),
            ContrastiveError::State(m) => selfsup_core::CoreError::checkpoint("method state", m),
            e @ ContrastiveError::Views { .. } => selfsup_core::CoreError::Training(e.to_string()),
            ContrastiveError::Shape(m) => selfsup_core::CoreError::Training(format!("shape: {m}")),
        }
    }
}

/// Result with [`ContrastiveError`].
pub type Result<T, E = ContrastiveError> = std::result::Result<T, E>;

/// Global average pooling of an encoder output.
///
/// # Shapes
/// `(N, C, H, W)` → `(N, C)`; a 2-d input `(N, C)` is returned unchanged.
pub fn pooled(features: &Tensor) -> Tensor {
    if features.dim() == 4 {
        features.mean_dim([2i64, 3].as_slice(), false, None)
    } else {
        features.shallow_clone()
    }
}

/// Whether libtorch is currently recording operations for autograd (false inside
/// `tch::no_grad`). Probed with a one-element tensor, since tch has no direct query.
pub fn grad_enabled() -> bool {
    let probe = Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (&probe * 2.0).requires_grad()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_mode_probe() {
        assert!(grad_enabled());
        assert!(!tch::no_grad(grad_enabled));
    }

    #[test]
    fn pooling_shapes() {
        let x = Tensor::ones([2, 3, 4, 5], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(pooled(&x).size(), [2, 3]);
        assert_eq!(pooled(&pooled(&x)).size(), [2, 3]);
    }
}
