//! [`Allocator`]: jemalloc (Jason Evans's allocator, through `tikv-jemallocator`), with Rust's
//! zeroed blocks of up to [`WRITE_ZEROS_UP_TO`] zeroed by writing; and its options.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::CStr;

/// jemalloc's options for a training process: freed pages are kept, never purged
/// (`MALLOC_CONF` in the environment, read after these, overrides them).
pub const MALLOC_CONF: &CStr = c"dirty_decay_ms:-1,muzzy_decay_ms:-1";

/// Zeroed blocks up to this size are zeroed by writing; larger ones by jemalloc's `calloc`,
/// whose fresh pages come zeroed from the kernel and are touched only where used.
const WRITE_ZEROS_UP_TO: usize = 64 << 20;

/// jemalloc, with Rust's zeroed blocks of up to 64 MiB zeroed by writing over an ordinary
/// block rather than by jemalloc's `calloc` (see the crate's header).
pub struct Allocator;

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

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, c_int, c_void, CStr};

    extern "C" {
        /// jemalloc's control interface (unprefixed, as its `malloc`).
        fn mallctl(
            name: *const c_char,
            oldp: *mut c_void,
            oldlenp: *mut usize,
            newp: *mut c_void,
            newlen: usize,
        ) -> c_int;
    }

    /// jemalloc's `ssize_t` option `name`, as this process runs it.
    fn option(name: &CStr) -> isize {
        let (mut value, mut len) = (0isize, std::mem::size_of::<isize>());
        // SAFETY: `value` has room for the `len` bytes of an `ssize_t`; nothing is written.
        let rc = unsafe {
            mallctl(name.as_ptr(), (&raw mut value).cast(), &mut len, std::ptr::null_mut(), 0)
        };
        assert_eq!(rc, 0, "mallctl {name:?}");
        value
    }

    /// `install!` (in this test harness, as in a binary) reaches jemalloc: its options are
    /// [`super::MALLOC_CONF`]'s, freed pages kept, unless the environment says otherwise.
    #[test]
    fn the_installed_allocator_is_jemalloc_with_its_pages_kept() {
        if std::env::var_os("MALLOC_CONF").is_some() {
            return;
        }
        assert_eq!(option(c"opt.dirty_decay_ms"), -1);
        assert_eq!(option(c"opt.muzzy_decay_ms"), -1);
        // libc's `malloc` (libtorch's) is jemalloc's too: its block sizes are jemalloc's
        // size classes (a 100,000-byte request gets a 114,688-byte class).
        // SAFETY: a block from `malloc`, measured and freed once.
        let usable = unsafe {
            let p = libc::malloc(100_000);
            let n = libc::malloc_usable_size(p);
            libc::free(p);
            n
        };
        assert_eq!(usable, 114_688);
    }

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
        // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
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
