//! Errors of the data crate. Every message fits one line and names the file (and the record or
//! byte offset) or the field at fault, without a trailing period.
use std::path::PathBuf;

/// Everything that can go wrong while reading, augmenting or loading data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O error on a named file.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error, printed in the message (not a `source`, so that an error
        /// chain does not print it twice).
        error: std::io::Error,
    },
    /// A malformed file: wrong magic number, truncated record, bad header, bad label.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the record or byte offset where it applies.
        msg: String,
    },
    /// A dataset that is not where it should be.
    #[error("{what} not found at {path} ({hint})")]
    Missing {
        /// The dataset or file that is missing.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// Where to get it.
        hint: String,
    },
    /// A dataset spec, split, pipeline or loader setting that is not valid.
    #[error("{0}")]
    Config(String),
    /// A download or verification failure (see [`crate::fetch`]).
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// An error from libtorch while building a batch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), error: source }
    }

    /// A format error on `path`.
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        DataError::File { path: path.into(), msg: msg.to_string() }
    }

    /// A configuration error.
    pub fn config(msg: impl std::fmt::Display) -> Self {
        DataError::Config(msg.to_string())
    }
}

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
