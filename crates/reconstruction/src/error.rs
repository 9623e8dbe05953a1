//! Errors of the reconstruction crate. Messages name the value or file at fault and fit on one
//! line.
use selfsup_core::CoreError;
use std::path::PathBuf;

/// Everything that can go wrong in the shared reconstruction parts.
#[derive(Debug, thiserror::Error)]
pub enum ReconstructionError {
    /// A setting that does not fit the images or the encoder.
    #[error("{0}")]
    Config(String),
    /// A sample grid that cannot be written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<ReconstructionError> for CoreError {
    fn from(e: ReconstructionError) -> Self {
        match e {
            ReconstructionError::Config(m) => CoreError::Config(m),
            ReconstructionError::Io { path, error } => CoreError::io(path, error),
            ReconstructionError::Torch(t) => CoreError::Torch(t),
        }
    }
}
