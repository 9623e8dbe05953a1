//! Errors of the colorization crate (also used by split-brain). Messages name the value at
//! fault and fit on one line.
use selfsup_core::CoreError;

/// Everything that can go wrong when building or running colorization.
#[derive(Debug, thiserror::Error)]
pub enum ColorizationError {
    /// A method config value that is malformed or does not fit the data.
    #[error("{method} config: {msg}")]
    Config {
        /// The method (`colorization`, `split-brain`).
        method: &'static str,
        /// What is wrong, naming the field.
        msg: String,
    },
    /// The encoder config is invalid (the core crate's error, passed through).
    #[error(transparent)]
    Encoder(Box<CoreError>),
    /// A colour conversion or quantisation error.
    #[error("lab: {0}")]
    Lab(#[from] selfsup_lab::LabError),
    /// The sample pictures could not be written.
    #[error("{path}: {msg}")]
    Picture {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A collective of a data-parallel job that failed.
    #[error("{0}")]
    Dist(#[from] selfsup_dist::DistError),
}

impl From<ColorizationError> for CoreError {
    fn from(e: ColorizationError) -> Self {
        match e {
            ColorizationError::Torch(t) => CoreError::Torch(t),
            ColorizationError::Dist(d) => CoreError::Dist(d),
            ColorizationError::Encoder(e) => *e,
            ColorizationError::Picture { path, msg } => {
                CoreError::io(path, std::io::Error::other(msg))
            }
            other => CoreError::Config(other.to_string()),
        }
    }
}
