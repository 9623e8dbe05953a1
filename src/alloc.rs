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

use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: Allocator = Allocator;

/// Zeroed blocks up to this size are zeroed by writing; larger ones by jemalloc's `calloc`,
/// whose fresh pages come zeroed from the kernel and are touched only where used.
const WRITE_ZEROS_UP_TO: usize = 64 << 20;

/// jemalloc, with Rust's zeroed blocks of up to [`WRITE_ZEROS_UP_TO`] zeroed by writing.
struct Allocator;

// SAFETY: every method forwards to jemalloc's `GlobalAlloc` with the caller's arguments;
// `alloc_zeroed` writes zeros over the `layout.size()` bytes jemalloc returned.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        unsafe { tikv_jemallocator::Jemalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > WRITE_ZEROS_UP_TO {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { tikv_jemallocator::Jemalloc.alloc_zeroed(layout) };
        }
        // SAFETY: the caller's contract, forwarded; a non-null block holds `layout.size()`
        // writable bytes.
        unsafe {
            let p = tikv_jemallocator::Jemalloc.alloc(layout);
            if !p.is_null() {
                std::ptr::write_bytes(p, 0, layout.size());
            }
            p
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { tikv_jemallocator::Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        unsafe { tikv_jemallocator::Jemalloc.realloc(ptr, layout, new_size) }
    }
}

/// jemalloc's options, read before `main` (its `malloc_conf` symbol: a NUL-terminated string).
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: the pointer of a `'static` C string literal, valid for the whole program.
    Some(unsafe { &*c"dirty_decay_ms:-1,muzzy_decay_ms:-1".as_ptr() });

#[cfg(test)]
mod tests {
    /// A zeroed block is zeros even where it reuses a freed block that held other bytes (the
    /// case jemalloc's `calloc` handled by purging), below and above the write threshold.
    #[test]
    fn zeroed_blocks_are_zero_after_reuse() {
        for n in [100, 53_248, 1 << 20, (super::WRITE_ZEROS_UP_TO >> 2) + 1] {
            for _ in 0..3 {
                let dirty = vec![u32::MAX; n];
                std::hint::black_box(&dirty);
                drop(dirty);
                let zeroed = vec![0u32; n];
                assert!(zeroed.iter().all(|&x| x == 0), "a zeroed block of {n} u32s");
            }
        }
    }

    /// This thread's minor page faults so far.
    fn minor_faults() -> i64 {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid `rusage` for the call to fill.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) }, 0);
        u.ru_minflt
    }

    /// A zeroed block that reuses freed memory is filled without faulting its pages in again:
    /// jemalloc's own `calloc` handed a recycled large block's pages back to the kernel, and
    /// reading then writing it faulted each of its 13 pages twice.
    #[test]
    fn a_recycled_zeroed_block_does_not_fault_its_pages_in_again() {
        const N: usize = 53_248 / 4;
        let warm = vec![u32::MAX; N];
        drop(std::hint::black_box(warm));
        let mut faults = Vec::new();
        for _ in 0..5 {
            let before = minor_faults();
            let mut v = vec![0f32; N];
            for x in v.iter_mut() {
                *x += 1.0;
            }
            std::hint::black_box(&v);
            faults.push(minor_faults() - before);
        }
        // Allow a stray fault or two (the test harness's own threads share the address space).
        assert!(faults.iter().all(|&f| f < 4), "page faults a zeroed block: {faults:?}");
    }
}
