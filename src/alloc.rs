//! The process's C allocator: jemalloc, linked in with its unprefixed `malloc`, `free` and
//! `posix_memalign`, so that libtorch's CPU tensors come from it too, and told never to hand
//! freed pages back to the kernel (`dirty_decay_ms:-1,muzzy_decay_ms:-1`).
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

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (its `malloc_conf` symbol: a NUL-terminated string).
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: the pointer of a `'static` C string literal, valid for the whole program.
    Some(unsafe { &*c"dirty_decay_ms:-1,muzzy_decay_ms:-1".as_ptr() });
