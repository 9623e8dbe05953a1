//! Collectives inside the autograd graph, for losses and layers that look across ranks: a sum
//! over the ranks whose backward sums the gradients over the ranks (`csrc/autograd.cpp`), and,
//! on top of it, a gather whose backward hands every rank the gradient of its own rows summed
//! over all ranks' losses (the `GatherLayer` of the SimCLR and MoCo v3 reference code; the
//! differentiable gather of `torch.distributed.nn`).
//!
//! Every rank must make the same calls in the same order, forward and backward: the backward
//! collectives run inside `Tensor::backward`, in the autograd engine's order, which is the same
//! on every rank for the same graph.
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Arc;

use tch::Tensor;

use crate::{Collectives, DistError, Result};

type Reduce = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_char, usize) -> c_int;
type Drop = unsafe extern "C" fn(*mut c_void);

extern "C" {
    fn selfsup_all_reduce_sum_autograd(
        x: *const c_void,
        reduce: Reduce,
        ctx: *mut c_void,
        drop: Drop,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// What the C++ node holds: the group, boxed so that a thin pointer reaches it.
type Ctx = Arc<dyn Collectives>;

/// Called by the C++ node, forward and backward: sums the tensor behind `t` (a handle this
/// function owns) over the ranks in place. Never unwinds into C++.
unsafe extern "C" fn reduce(
    ctx: *mut c_void,
    t: *mut c_void,
    err: *mut c_char,
    len: usize,
) -> c_int {
    // SAFETY: `ctx` is the `Box<Ctx>` made in `all_reduce_sum_with_grad`, alive until `drop`;
    // `t` is a `new at::Tensor` handed over to us (tch's `C_tensor` is `at::Tensor`).
    let group = unsafe { &*(ctx as *const Ctx) };
    let t = unsafe { Tensor::from_ptr(t.cast()) };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _no_grad = tch::no_grad_guard();
        group.all_reduce_sum(&t)
    }));
    let msg = match outcome {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "all_reduce with gradient: the collective panicked".to_string(),
    };
    if !err.is_null() && len > 0 {
        let n = msg.len().min(len - 1);
        // SAFETY: `err` has room for `len` bytes (the C++ caller's buffer).
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
            *err.add(n) = 0;
        }
    }
    -1
}

unsafe extern "C" fn drop_ctx(ctx: *mut c_void) {
    // SAFETY: made by `Box::into_raw` in `all_reduce_sum_with_grad`, dropped once by C++.
    drop(unsafe { Box::from_raw(ctx as *mut Ctx) });
}

/// The sum of `x` over the ranks (every rank gets the same values), differentiable: the
/// gradient reaching `x` is the sum over the ranks of the gradients reaching the output. At
/// world size 1 it is `x` itself.
///
/// # Shapes
/// `x`: any shape, the same on every rank; returns the same shape (contiguous).
pub fn all_reduce_sum_with_grad(group: &Arc<dyn Collectives>, x: &Tensor) -> Result<Tensor> {
    if group.world_size() == 1 {
        return Ok(x.shallow_clone());
    }
    let ctx = Box::into_raw(Box::new(group.clone())) as *mut c_void;
    let mut out: *mut c_void = std::ptr::null_mut();
    let mut err = [0 as c_char; 1024];
    // SAFETY: `x` is a live tensor; `ctx` is released by the C++ side through `drop_ctx`
    // (including on failure); `out` receives a new handle on success.
    let rc = unsafe {
        selfsup_all_reduce_sum_autograd(
            x.as_ptr().cast(),
            reduce,
            ctx,
            drop_ctx,
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the C++ side wrote a NUL-terminated message.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(DistError::Collective {
            op: "all_reduce with gradient",
            rank: group.rank(),
            world: group.world_size(),
            msg,
        });
    }
    // SAFETY: `out` is a new `at::Tensor` handle that we now own.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Every rank's `x` stacked along dim 0 in rank order, differentiable: rank `r`'s rows of the
/// result carry gradient back to rank `r`'s `x`, summed over every rank's use of them. With each
/// rank's loss the mean over its own samples and the gradients averaged after backward (DDP),
/// the parameters get the gradient of the loss over the whole global batch.
///
/// Built as a sum of zero-padded copies, so it moves `world_size` times the data of a plain
/// gather: meant for embeddings and statistics (kilobytes a step), not for images.
///
/// # Shapes
/// `x`: `(N, ...)`, the same shape on every rank; returns `(world_size · N, ...)`.
pub fn all_gather_with_grad(group: &Arc<dyn Collectives>, x: &Tensor) -> Result<Tensor> {
    let world = group.world_size() as i64;
    if world == 1 {
        return Ok(x.shallow_clone());
    }
    if x.dim() == 0 {
        return Err(DistError::Collective {
            op: "all_gather with gradient",
            rank: group.rank(),
            world: world as usize,
            msg: "a 0-d tensor has no dim 0 to gather along".into(),
        });
    }
    let size = x.size();
    let n = size[0];
    let rank = group.rank() as i64;
    // [zeros for ranks < r; x; zeros for ranks > r], then summed over the ranks.
    let zeros = |rows: i64| {
        let mut s = size.clone();
        s[0] = rows;
        Tensor::f_zeros(s.as_slice(), (x.kind(), x.device()))
    };
    let mut parts = Vec::with_capacity(3);
    if rank > 0 {
        parts.push(zeros(rank * n)?);
    }
    parts.push(x.shallow_clone());
    if rank + 1 < world {
        parts.push(zeros((world - rank - 1) * n)?);
    }
    let padded = Tensor::f_cat(&parts, 0)?;
    all_reduce_sum_with_grad(group, &padded)
}
