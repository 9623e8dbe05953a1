//! Errors of the autoencoder crate. Messages name the value at fault and fit on one line.
use selfsup_core::CoreError;
use selfsup_reconstruction::ReconstructionError;

/// Everything that can go wrong when building or stepping the denoising autoencoder.
#[derive(Debug, thiserror::Error)]
pub enum AutoencoderError {
    /// A method config value that is malformed or does not fit the data.
    #[error("autoencoder config: {0}")]
    Config(String),
    /// A batch that is not what the method's view gives.
    #[error("autoencoder: {0}")]
    Batch(String),
    /// The encoder config is invalid (the core crate's error, passed through).
    #[error(transparent)]
    Encoder(Box<CoreError>),
    /// A corruption that cannot be applied (the data crate's error).
    #[error("autoencoder: {0}")]
    Data(#[from] selfsup_data::DataError),
    /// A sample grid that cannot be written.
    #[error("autoencoder: {0}")]
    Reconstruction(#[from] ReconstructionError),
    /// An error from libtorch.
    #[error("autoencoder: libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<AutoencoderError> for CoreError {
    fn from(e: AutoencoderError) -> Self {
        match e {
            AutoencoderError::Torch(t) => CoreError::Torch(t),
            AutoencoderError::Encoder(e) => *e,
            AutoencoderError::Reconstruction(r @ ReconstructionError::Io { .. }) => r.into(),
            other => CoreError::Config(other.to_string()),
        }
    }
}
