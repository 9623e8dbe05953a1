//! Errors of the distributed crate. Messages name the variable, address, rank or collective at
//! fault and fit one line.

/// Result with [`DistError`].
pub type Result<T, E = DistError> = std::result::Result<T, E>;

/// Everything that can go wrong setting up a job or running a collective.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launcher variable (`RANK`, `WORLD_SIZE`, ...) that is missing, malformed or out of range.
    #[error("environment: {0}")]
    Env(String),
    /// The store could not be reached, or one of its calls failed or timed out.
    #[error("store {addr}: {msg}")]
    Store {
        /// `host:port` of the store.
        addr: String,
        /// What went wrong (c10d's message).
        msg: String,
    },
    /// A collective whose ranks disagree (a tensor of another shape or kind on one rank).
    #[error("{op} on rank {rank} of {world}: {msg}")]
    Collective {
        /// The collective (`all_reduce`, `all_gather`, `broadcast`).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The world size.
        world: usize,
        /// What disagreed.
        msg: String,
    },
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
