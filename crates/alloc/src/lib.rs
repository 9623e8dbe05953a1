//! The process's C allocator for a binary that trains with selfsup: jemalloc, linked in with its
//! unprefixed `malloc`, `free` and `posix_memalign`, so that libtorch's CPU tensors come from it
//! too, and told never to hand freed pages back to the kernel
//! (`dirty_decay_ms:-1,muzzy_decay_ms:-1`). A binary opts in with one line at its root,
//! [`install!`]; the `selfsup` binary and the workspace's examples that time or train do.
//!
//! Why: glibc's `malloc` serves every block above its mmap threshold (at most 32 MiB) with a
//! fresh `mmap` and unmaps it on `free`, so each training step's activations fault all their
//! pages in again and the kernel zeroes them. Measured with `perf` on 2 cores of an Intel Xeon
//! (family 6, model 207), RotNet's NIN of width 192 at batch 128 × 4 rotations, fp32: 16.3
//! million page faults in 5 steps, 11.6 images/s; with jemalloc so configured 22.1 images/s at
//! the same peak resident memory (3.9 GB). At the cpu profile's NIN of width 16 (batch 64),
//! the kernel's page-fault work was 30% of all cycles. jemalloc's default decay (10 s) does
//! not help: blocks over its `oversize_threshold` (8 MiB) are purged at once.
//!
//! The memory a run holds therefore stays at its peak until the process ends, as with
//! PyTorch's caching allocator on CUDA. `MALLOC_CONF` (read after this string) overrides it,
//! e.g. `MALLOC_CONF=dirty_decay_ms:10000,muzzy_decay_ms:10000`.
//!
//! Rust's zeroed allocations (`vec![0.0; n]`) are zeroed by writing, not by jemalloc's
//! `calloc` ([`Allocator`]): for a block of its large classes (16 KiB and up) recycled from
//! freed memory, jemalloc's `calloc` zeroes by handing the pages back (`madvise(MADV_DONTNEED)`),
//! so the block's first touch faults every page in again; the augmentations' `+=` into a fresh
//! `vec![0.0; n]` read each page first (mapping the shared zero page) and then write it, a
//! second fault whose TLB flush interrupts the other core with an IPI. Measured with `perf` on
//! 2 cores of an AMD EPYC (family 25, model 1), jigsaw's cpu step (AlexNet of width 24, batch
//! 64 × 9 tiles, the loader in 2 threads beside 2 compute threads): 2,350 page faults a step,
//! 40% of them in `augment::resample` and 19% in `augment::padded_crop`, 5% of the process's
//! samples in the kernel's fault path and IPIs; see `bench/README.md` for the figures after.
//!
//! On targets other than Linux with glibc the crate is empty and [`install!`] expands to
//! nothing: the system allocator stays.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod jemalloc;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub use jemalloc::{Allocator, MALLOC_CONF};

/// Makes [`Allocator`] the binary's global allocator and gives jemalloc its options
/// ([`MALLOC_CONF`], through the `malloc_conf` symbol it reads before `main`). Once, at the
/// root of a binary (`main.rs`, an example, a test harness):
///
/// ```ignore
/// selfsup_alloc::install!();
/// ```
#[macro_export]
macro_rules! install {
    () => {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        #[global_allocator]
        static SELFSUP_ALLOCATOR: $crate::Allocator = $crate::Allocator;

        /// jemalloc's options, read before `main` (its `malloc_conf` symbol: a NUL-terminated
        /// string).
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        #[allow(non_upper_case_globals)]
        #[export_name = "malloc_conf"]
        pub static selfsup_malloc_conf: Option<&'static ::std::ffi::c_char> =
            // SAFETY: the pointer of a `'static` C string, valid for the whole program.
            Some(unsafe { &*$crate::MALLOC_CONF.as_ptr() });
    };
}

#[cfg(test)]
install!();
