//! Errors of the context-encoder crate. Messages name the value at fault and fit on one line.
use selfsup_core::CoreError;
use selfsup_reconstruction::ReconstructionError;

/// Everything that can go wrong when building or stepping a context encoder.
#[derive(Debug, thiserror::Error)]
pub enum ContextEncoderError {
    /// A method config value that is malformed or does not fit the data.
    #[error("context-encoder config: {0}")]
    Config(String),
    /// A batch that is not what the method's view gives.
    #[error("context-encoder: {0}")]
    Batch(String),
    /// The encoder config is invalid (the core crate's error, passed through).
    #[error(transparent)]
    Encoder(Box<CoreError>),
    /// A mask that cannot be drawn (the data crate's error).
    #[error("context-encoder: {0}")]
    Data(#[from] selfsup_data::DataError),
    /// A sample grid that cannot be written.
    #[error("context-encoder: {0}")]
    Reconstruction(#[from] ReconstructionError),
    /// An error from libtorch.
    #[error("context-encoder: libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<ContextEncoderError> for CoreError {
    fn from(e: ContextEncoderError) -> Self {
        match e {
            ContextEncoderError::Torch(t) => CoreError::Torch(t),
            ContextEncoderError::Encoder(e) => *e,
            ContextEncoderError::Reconstruction(r @ ReconstructionError::Io { .. }) => r.into(),
            other => CoreError::Config(other.to_string()),
        }
    }
}
