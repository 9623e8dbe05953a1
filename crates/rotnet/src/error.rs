//! Errors of the RotNet crate. Messages name the value at fault and fit on one line.
use selfsup_core::CoreError;

/// Everything that can go wrong when rotating batches or building RotNet.
#[derive(Debug, thiserror::Error)]
pub enum RotNetError {
    /// A tensor that is not a `(B, C, H, W)` batch.
    #[error("rotnet: expected a (B, C, H, W) batch, got shape {shape:?}")]
    Shape {
        /// The shape received.
        shape: Vec<i64>,
    },
    /// A rotation that swaps or mixes the axes of a non-square image.
    #[error("rotnet: rotation by {degrees} degrees needs square images, got {height}x{width}")]
    NonSquare {
        /// The rotation asked for.
        degrees: u32,
        /// Image height.
        height: i64,
        /// Image width.
        width: i64,
    },
    /// An angle outside `0..360`.
    #[error("rotnet: rotation angle {degrees} is not in 0..360 degrees")]
    Angle {
        /// The angle asked for.
        degrees: u32,
    },
    /// A batch without the view RotNet asked for.
    #[error("rotnet: batch has {got} views, expected 1")]
    Views {
        /// Number of views in the batch.
        got: usize,
    },
    /// A method config value that is malformed or does not fit the data.
    #[error("rotnet config: {0}")]
    Config(String),
    /// The encoder config is invalid (the core crate's error, passed through).
    #[error(transparent)]
    Encoder(Box<CoreError>),
    /// An error from libtorch.
    #[error("rotnet: libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<RotNetError> for CoreError {
    fn from(e: RotNetError) -> Self {
        match e {
            RotNetError::Torch(t) => CoreError::Torch(t),
            RotNetError::Encoder(e) => *e,
            other => CoreError::Config(other.to_string()),
        }
    }
}
