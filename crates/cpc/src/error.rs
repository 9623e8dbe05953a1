//! Errors of the cpc crate. Messages name the value at fault and fit on one line.
use selfsup_core::CoreError;

/// Everything that can go wrong when cutting patch grids or building the CPC networks.
#[derive(Debug, thiserror::Error)]
pub enum CpcError {
    /// A method config value that is malformed or does not fit the data.
    #[error("cpc config: {0}")]
    Config(String),
    /// A batch that is not what the method's view gives.
    #[error("cpc: {0}")]
    Batch(String),
    /// The encoder config is invalid (the core crate's error, passed through).
    #[error(transparent)]
    Encoder(Box<CoreError>),
    /// An error from libtorch.
    #[error("cpc: libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A collective of a data-parallel job that failed.
    #[error("cpc: {0}")]
    Dist(#[from] selfsup_dist::DistError),
}

impl From<CpcError> for CoreError {
    fn from(e: CpcError) -> Self {
        match e {
            CpcError::Torch(t) => CoreError::Torch(t),
            CpcError::Dist(d) => CoreError::Dist(d),
            CpcError::Encoder(e) => *e,
            other => CoreError::Config(other.to_string()),
        }
    }
}
