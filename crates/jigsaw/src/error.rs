//! Errors of the jigsaw crate. Messages name the value at fault and fit on one line.
use selfsup_core::CoreError;

/// Everything that can go wrong when building puzzles or the jigsaw network.
#[derive(Debug, thiserror::Error)]
pub enum JigsawError {
    /// A method config value that is malformed or does not fit the data.
    #[error("jigsaw config: {0}")]
    Config(String),
    /// A batch that is not what the method's view gives.
    #[error("jigsaw: {0}")]
    Batch(String),
    /// The encoder config is invalid (the core crate's error, passed through).
    #[error(transparent)]
    Encoder(Box<CoreError>),
    /// An error from libtorch.
    #[error("jigsaw: libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<JigsawError> for CoreError {
    fn from(e: JigsawError) -> Self {
        match e {
            JigsawError::Torch(t) => CoreError::Torch(t),
            JigsawError::Encoder(e) => *e,
            other => CoreError::Config(other.to_string()),
        }
    }
}
