//! Data-parallel training on libtorch's own distributed engine (c10d), as PyTorch's
//! `DistributedDataParallel` does it (Li et al. 2020, "PyTorch Distributed: Experiences on
//! Accelerating Data Parallel Training").
//!
//! - [`World`]: the job this process belongs to, from the launcher's variables (`RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, as `torchrun` sets them).
//! - [`TcpStore`]: c10d's `TCPStore`, through the C++ shim in `csrc/store.cpp` (rank 0 serves
//!   it, every rank connects: PyTorch's `env://` rendezvous).
//! - [`Collectives`] and [`StoreGroup`]: sum, gather, broadcast and barrier across the ranks
//!   over the store; with the `nccl` feature, `NcclGroup`: the same on CUDA tensors over c10d's
//!   ProcessGroupNCCL (`csrc/nccl.cpp`), picked by [`init_for`] for CUDA jobs;
//!   [`average_gradients`]: DDP's gradient averaging after backward in one bucket;
//!   [`GradReducer`]: the same in buckets started as backward produces them (DDP's
//!   `Reducer`), the trainer's.
//! - [`all_reduce_sum_with_grad`] and [`all_gather_with_grad`]: collectives inside the autograd
//!   graph (a C++ autograd function calling back into the group), for losses that use every
//!   rank's embeddings and for synchronised batch norm.
//!
//! The trainer (`selfsup-core`) shards each global batch across the ranks and averages the
//! gradients, so N ranks at `B / N` each train like one process at batch `B` (exactly, up to
//! float rounding, for networks without batch norm).
mod autograd;
mod env;
mod error;
mod group;
#[cfg(feature = "nccl")]
mod nccl;
mod reducer;
mod store;

pub use autograd::{all_gather_with_grad, all_reduce_sum_with_grad};
pub use env::World;
pub use error::{DistError, Result};
pub use group::{
    average_gradients, average_in_place, init, init_for, on_local_ranks, Collectives, Done,
    Pending, StoreGroup,
};
#[cfg(feature = "nccl")]
pub use nccl::NcclGroup;
pub use reducer::{GradReducer, DEFAULT_BUCKET_BYTES};
pub use store::{free_port, shim_message, TcpStore};
