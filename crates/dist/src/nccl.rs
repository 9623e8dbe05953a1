//! [`NcclGroup`]: the collectives of a CUDA job over c10d's `ProcessGroupNCCL` (libtorch_cuda,
//! through `csrc/nccl.cpp`), as PyTorch's DDP runs them on GPUs. NCCL's rendezvous goes through
//! the job's `TCPStore`. Tensors on the CPU, the barrier and the end of a run go through the
//! store ([`StoreGroup`]), which NCCL cannot serve.
//!
//! Built with the crate's `nccl` feature only (CUDA's headers are needed to compile the shim).
use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::Duration;

use tch::{Device, Tensor};

use crate::{Collectives, DistError, Result, StoreGroup};

extern "C" {
    fn selfsup_nccl_new(
        store: *mut c_void,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn selfsup_nccl_free(h: *mut c_void);
    fn selfsup_nccl_all_reduce_sum(
        h: *mut c_void,
        t: *const c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_nccl_all_reduce_start(
        h: *mut c_void,
        t: *const c_void,
        work: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_nccl_work_wait(work: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn selfsup_nccl_all_gather(
        h: *mut c_void,
        out: *const c_void,
        input: *const c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_nccl_broadcast(
        h: *mut c_void,
        t: *const c_void,
        root: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// A process group on NCCL (see the module docs).
#[derive(Debug)]
pub struct NcclGroup {
    handle: *mut c_void,
    store: StoreGroup,
}

// SAFETY: ProcessGroupNCCL may be called from any thread; every rank issues its collectives in
// one order (the trainer's thread, or the autograd engine's for backward collectives).
unsafe impl Send for NcclGroup {}
// SAFETY: as above; the handle is not mutated after construction.
unsafe impl Sync for NcclGroup {}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        // SAFETY: made by `selfsup_nccl_new`, freed once.
        unsafe { selfsup_nccl_free(self.handle) };
    }
}

/// Runs a shim call with an error buffer; a failure becomes a [`DistError::Collective`].
fn call(
    op: &'static str,
    g: &StoreGroup,
    f: impl FnOnce(*mut c_char, usize) -> c_int,
) -> Result<()> {
    let mut err = [0 as c_char; 1024];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim wrote a NUL-terminated message.
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
    Err(DistError::Collective { op, rank: g.rank(), world: g.world_size(), msg })
}

impl NcclGroup {
    /// NCCL over the ranks of `store`'s job; `timeout` bounds every collective. Each rank must
    /// have set its CUDA device (the trainer's tensors live there).
    pub fn new(store: StoreGroup, timeout: Duration) -> Result<Self> {
        let mut err = [0 as c_char; 1024];
        // SAFETY: the store handle is live for the call (ProcessGroupNCCL keeps its own
        // reference to the store); the error buffer has the given length.
        let handle = unsafe {
            selfsup_nccl_new(
                store.store().raw(),
                store.rank() as c_int,
                store.world_size() as c_int,
                timeout.as_millis() as i64,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if handle.is_null() {
            // SAFETY: the shim wrote a NUL-terminated message.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(DistError::Store {
                addr: store.store().addr().to_string(),
                msg: format!("starting NCCL: {msg}"),
            });
        }
        Ok(NcclGroup { handle, store })
    }

    /// `t` itself when contiguous (NCCL works in place on its memory), else a contiguous copy
    /// to be copied back.
    fn contiguous(t: &Tensor) -> Result<(Tensor, bool)> {
        if t.is_contiguous() {
            Ok((t.shallow_clone(), false))
        } else {
            Ok((t.f_contiguous()?, true))
        }
    }
}

/// An all-reduce running on NCCL's stream (see `selfsup_nccl_all_reduce_start`).
struct NcclPending {
    work: *mut c_void,
    rank: usize,
    world: usize,
}

// SAFETY: a c10d work object may be waited for from any thread.
unsafe impl Send for NcclPending {}

impl crate::Pending for NcclPending {
    fn wait(self: Box<Self>) -> Result<()> {
        let mut err = [0 as c_char; 1024];
        // SAFETY: a work handle of `selfsup_nccl_all_reduce_start`, waited for and freed once.
        if unsafe { selfsup_nccl_work_wait(self.work, err.as_mut_ptr(), err.len()) } == 0 {
            return Ok(());
        }
        // SAFETY: the shim wrote a NUL-terminated message.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        Err(DistError::Collective { op: "all_reduce", rank: self.rank, world: self.world, msg })
    }
}

impl Collectives for NcclGroup {
    fn rank(&self) -> usize {
        self.store.rank()
    }

    fn world_size(&self) -> usize {
        self.store.world_size()
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        if t.device() == Device::Cpu {
            return self.store.all_reduce_sum(t);
        }
        let (c, copied) = Self::contiguous(t)?;
        // SAFETY: live handle and tensor; the shim catches every C++ exception.
        call("all_reduce", &self.store, |e, n| unsafe {
            selfsup_nccl_all_reduce_sum(self.handle, c.as_ptr().cast(), e, n)
        })?;
        if copied {
            let _no_grad = tch::no_grad_guard();
            t.shallow_clone().f_copy_(&c)?;
        }
        Ok(())
    }

    /// Asynchronous on NCCL for a contiguous CUDA tensor (the reducer's flat buckets): the
    /// host and the current stream go on until the work is waited for. Anything else as
    /// [`Collectives::all_reduce_sum`].
    fn start_all_reduce_sum(&self, t: &Tensor) -> Result<Box<dyn crate::Pending>> {
        if t.device() == Device::Cpu || !t.is_contiguous() {
            self.all_reduce_sum(t)?;
            return Ok(Box::new(crate::Done));
        }
        let mut work = std::ptr::null_mut();
        // SAFETY: live handle and tensor; `work` receives a handle we then own.
        call("all_reduce", &self.store, |e, n| unsafe {
            selfsup_nccl_all_reduce_start(self.handle, t.as_ptr().cast(), &mut work, e, n)
        })?;
        Ok(Box::new(NcclPending { work, rank: self.rank(), world: self.world_size() }))
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        if t.device() == Device::Cpu || t.dim() == 0 {
            return self.store.all_gather(t);
        }
        let mut size = t.size();
        size[0] *= self.world_size() as i64;
        let out = Tensor::f_empty(size.as_slice(), (t.kind(), t.device()))?;
        let input = t.f_contiguous()?;
        // SAFETY: live handle and tensors; the shim catches every C++ exception.
        call("all_gather", &self.store, |e, n| unsafe {
            selfsup_nccl_all_gather(self.handle, out.as_ptr().cast(), input.as_ptr().cast(), e, n)
        })?;
        Ok(out)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        if t.device() == Device::Cpu {
            return self.store.broadcast(t, root);
        }
        let (c, copied) = Self::contiguous(t)?;
        // SAFETY: live handle and tensor; the shim catches every C++ exception.
        call("broadcast", &self.store, |e, n| unsafe {
            selfsup_nccl_broadcast(self.handle, c.as_ptr().cast(), root as c_int, e, n)
        })?;
        if copied {
            let _no_grad = tch::no_grad_guard();
            t.shallow_clone().f_copy_(&c)?;
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.store.barrier()
    }

    fn finish(&self) -> Result<()> {
        self.store.finish()
    }
}
