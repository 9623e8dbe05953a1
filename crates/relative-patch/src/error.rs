//! Errors of the relative-patch crate. Messages name the value at fault and fit on one line.
use selfsup_core::CoreError;

/// Everything that can go wrong when making patch pairs or the pair network.
#[derive(Debug, thiserror::Error)]
pub enum RelativePatchError {
    /// A method config value that is malformed or does not fit the data.
    #[error("relative-patch config: {0}")]
    Config(String),
    /// A batch that is not what the method's view gives.
    #[error("relative-patch: {0}")]
    Batch(String),
    /// The encoder config is invalid (the core crate's error, passed through).
    #[error(transparent)]
    Encoder(Box<CoreError>),
    /// An error from libtorch.
    #[error("relative-patch: libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<RelativePatchError> for CoreError {
    fn from(e: RelativePatchError) -> Self {
        match e {
            RelativePatchError::Torch(t) => CoreError::Torch(t),
            RelativePatchError::Encoder(e) => *e,
            other => CoreError::Config(other.to_string()),
        }
    }
}
