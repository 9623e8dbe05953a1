//! Errors of the core crate. Messages name the file, field or value at fault and fit one line.
use std::path::PathBuf;

/// Result with [`CoreError`].
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in the core crate.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A configuration value is missing, malformed or out of range.
    #[error("config: {0}")]
    Config(String),
    /// A method name that the registry does not know.
    #[error("unknown method `{name}` (known: {known})")]
    UnknownMethod {
        /// The name asked for.
        name: String,
        /// The registered names, comma separated.
        known: String,
    },
    /// A device string that is not `auto`, `cpu` or `cuda:N`, or a CUDA device that is absent.
    #[error("device: {0}")]
    Device(String),
    /// A checkpoint that cannot be read or written.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        msg: String,
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
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// An error from the data pipeline.
    #[error(transparent)]
    Data(Box<selfsup_data::DataError>),
    /// A data-parallel job's store or collective failed (a rank that left, a timeout).
    #[error("distributed: {0}")]
    Dist(#[from] selfsup_dist::DistError),
    /// An optimizer setting or saved optimizer state that does not fit the parameters.
    #[error("optimizer: {0}")]
    Optimizer(String),
    /// Training diverged or produced a non-finite value.
    #[error("training: {0}")]
    Training(String),
    /// SIGINT or SIGTERM: the current step finished and a checkpoint was written.
    #[error(
        "interrupted at step {step}: checkpoint written; resume with `selfsup train --config \
         {dir}/config.json --out {dir} --resume`",
        dir = run_dir.display()
    )]
    Interrupted {
        /// The run folder.
        run_dir: PathBuf,
        /// Optimizer steps done.
        step: u64,
    },
}

impl From<selfsup_data::DataError> for CoreError {
    fn from(e: selfsup_data::DataError) -> Self {
        CoreError::Data(Box::new(e))
    }
}

impl CoreError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io { path: path.into(), error: source }
    }

    /// A checkpoint error on `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        CoreError::Checkpoint { path: path.into(), msg: msg.to_string() }
    }
}
