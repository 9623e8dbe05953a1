//! Errors of the evaluation crate. Messages name the file, field or value at fault and fit one
//! line.
use std::path::PathBuf;

/// Result with [`EvalError`].
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// Everything that can go wrong while evaluating an encoder.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A protocol setting is out of range or inconsistent.
    #[error("config: {0}")]
    Config(String),
    /// A dataset that cannot be used by the protocol (unlabeled, mismatched shapes, empty).
    #[error("dataset `{name}`: {msg}")]
    Dataset {
        /// Dataset name.
        name: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A tap name the encoder does not have.
    #[error("unknown tap `{tap}` (encoder taps: {known})")]
    UnknownTap {
        /// The tap asked for.
        tap: String,
        /// The encoder's taps, comma separated.
        known: String,
    },
    /// An I/O error on a named file.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error, printed in the message (not a `source`, so that an error
        /// chain does not print it twice).
        error: std::io::Error,
    },
    /// Training of a probe produced a non-finite loss.
    #[error("training: {0}")]
    Training(String),
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// An error from the data crate (boxed: it is large).
    #[error(transparent)]
    Data(Box<selfsup_data::DataError>),
    /// An error from the core crate (boxed: it is large).
    #[error(transparent)]
    Core(Box<selfsup_core::CoreError>),
    /// A JSON (de)serialisation error.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<selfsup_data::DataError> for EvalError {
    fn from(e: selfsup_data::DataError) -> Self {
        EvalError::Data(Box::new(e))
    }
}

impl From<selfsup_core::CoreError> for EvalError {
    fn from(e: selfsup_core::CoreError) -> Self {
        EvalError::Core(Box::new(e))
    }
}

impl EvalError {
    /// A dataset error on `name`.
    pub fn dataset(name: &str, msg: impl std::fmt::Display) -> Self {
        EvalError::Dataset { name: name.to_string(), msg: msg.to_string() }
    }
}
