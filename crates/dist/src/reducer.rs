//! DDP's gradient averaging, bucketed and overlapping backward (Li et al. 2020, "PyTorch
//! Distributed: Experiences on Accelerating Data Parallel Training", §3.2; PyTorch's
//! `torch/csrc/distributed/c10d/reducer.cpp`).
//!
//! The parameters are split into buckets of about `bucket_bytes` of gradient, in reverse
//! order of the model's parameters (gradients become ready roughly in that order during
//! backward). A post-accumulate-grad hook on every parameter (`csrc/hooks.cpp`) tells the
//! reducer when its gradient is in `.grad`; once every gradient of a bucket is, the bucket is
//! flattened and its all-reduce started ([`Collectives::start_all_reduce_sum`]: NCCL's
//! asynchronous work, or the store group's background lane), while backward goes on with the
//! layers below. Buckets are started strictly in their order, on every rank the same, so the
//! job's collectives stay in the same order everywhere (as in DDP, this relies on every rank
//! running the same graph). [`GradReducer::finish`], after backward, starts what is left
//! (buckets whose parameters got no gradient from this backward), waits for every bucket in
//! order and writes each gradient back divided by the world size, then averages the step's
//! loss and metrics and sums its flags in one more message: the same values, bit for bit, as
//! [`crate::average_gradients`]'s single bucket after backward (each element is summed over
//! the ranks in rank order either way).
//!
//! Only gradients that arrive through the trainer's own backward, between
//! [`GradReducer::arm`] and [`GradReducer::finish`], start buckets early; a method that runs
//! its own backward passes inside its step (gradient caching) still gets every gradient
//! averaged, at `finish`.
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use tch::{Device, Kind, Tensor};

use crate::group::{average_in_place_as, flat_bucket, unpack_means, Collectives, Pending};
use crate::{DistError, Result};

extern "C" {
    fn selfsup_set_grad_ready_hooks(
        params: *const *const c_void,
        n: usize,
        cb: extern "C" fn(*mut c_void, usize),
        ctx: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_clear_grad_ready_hooks(params: *const *const c_void, n: usize);
}

/// DDP's default bucket size (`bucket_cap_mb = 25`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Averages gradients over the ranks of a job, bucket by bucket as backward produces them
/// (see the module docs).
pub struct GradReducer {
    /// Boxed: the hooks hold its address.
    shared: Box<Shared>,
    /// The hooked parameters (what the C side holds hooks on).
    hooked: Vec<Tensor>,
}

impl std::fmt::Debug for GradReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradReducer").field("buckets", &self.shared.buckets).finish()
    }
}

/// What the hooks and the trainer share.
struct Shared {
    group: Arc<dyn Collectives>,
    /// The parameters, by index.
    params: Vec<Tensor>,
    /// Parameter indices of each bucket, buckets in the order they are started.
    buckets: Vec<Vec<usize>>,
    /// The bucket of each parameter.
    bucket_of: Vec<usize>,
    state: Mutex<State>,
}

/// One step's progress.
#[derive(Default)]
struct State {
    /// Between `arm` and `finish`.
    armed: bool,
    /// Per parameter: its gradient has arrived in this step.
    ready: Vec<bool>,
    /// Per bucket: gradients still to arrive.
    missing: Vec<usize>,
    /// The next bucket to start.
    next: usize,
    /// Started buckets: the flat buffer, its members with gradients, the collective.
    started: Vec<(Tensor, Vec<usize>, Box<dyn Pending>)>,
    /// Buckets started from a hook, during backward, this step.
    early: usize,
    /// The first error met in a hook, reported by `finish`.
    error: Option<DistError>,
}

impl Shared {
    /// Starts bucket `b`: its members' defined gradients, flattened into one buffer of the
    /// kind and on the device of the first.
    fn start(&self, st: &mut State, b: usize) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        let members: Vec<usize> =
            self.buckets[b].iter().copied().filter(|&i| self.params[i].grad().defined()).collect();
        let Some(&first) = members.first() else {
            return Ok(());
        };
        let g0 = self.params[first].grad();
        let buffer = flat_bucket(&self.grads(&members), &[], g0.kind(), g0.device())?;
        let work = self.group.start_all_reduce_sum(&buffer)?;
        st.started.push((buffer, members, work));
        Ok(())
    }

    /// The gradients of parameters `members`.
    fn grads(&self, members: &[usize]) -> Vec<Tensor> {
        members.iter().map(|&i| self.params[i].grad()).collect()
    }

    /// A gradient arrived: marks it, and starts every bucket now complete in order.
    fn on_ready(&self, index: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.armed || st.error.is_some() || st.ready[index] {
            return;
        }
        st.ready[index] = true;
        st.missing[self.bucket_of[index]] -= 1;
        while st.next < self.buckets.len() && st.missing[st.next] == 0 {
            let b = st.next;
            st.next += 1;
            match self.start(&mut st, b) {
                Ok(()) => st.early += 1,
                Err(e) => {
                    st.error = Some(e);
                    return;
                }
            }
        }
    }
}

/// The hook's way back into Rust: `ctx` is the reducer's `Shared`.
extern "C" fn grad_ready(ctx: *mut c_void, index: usize) {
    // SAFETY: `ctx` is the address of the reducer's boxed `Shared`, alive while the hooks are
    // set (they are cleared before the box is dropped).
    let shared = unsafe { &*(ctx as *const Shared) };
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.on_ready(index)));
    if caught.is_err() {
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.error.get_or_insert(DistError::Collective {
            op: "all_reduce",
            rank: shared.group.rank(),
            world: shared.group.world_size(),
            msg: "a gradient bucket panicked while starting".into(),
        });
    }
}

impl GradReducer {
    /// A reducer of the gradients of `params` (those that require one) over `group`, in
    /// buckets of about `bucket_bytes` (at least one parameter each; 0 puts each parameter in
    /// a bucket of its own). Sets a post-accumulate-grad hook on each parameter, removed when
    /// the reducer is dropped; a parameter hooked already is refused.
    pub fn new(
        group: Arc<dyn Collectives>,
        params: &[(String, Tensor)],
        bucket_bytes: usize,
    ) -> Result<GradReducer> {
        let params: Vec<Tensor> = params
            .iter()
            .filter(|(_, p)| p.requires_grad())
            .map(|(_, p)| p.shallow_clone())
            .collect();
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0usize;
        for i in (0..params.len()).rev() {
            let size = params[i].numel() * params[i].kind().elt_size_in_bytes();
            match buckets.last_mut() {
                Some(b) if bytes + size <= bucket_bytes || b.is_empty() => {
                    b.push(i);
                    bytes += size;
                }
                _ => {
                    buckets.push(vec![i]);
                    bytes = size;
                }
            }
        }
        let mut bucket_of = vec![0; params.len()];
        for (b, members) in buckets.iter().enumerate() {
            for &i in members {
                bucket_of[i] = b;
            }
        }
        let shared = Box::new(Shared {
            group,
            params,
            buckets,
            bucket_of,
            state: Mutex::new(State::default()),
        });
        let hooked: Vec<Tensor> = shared.params.iter().map(Tensor::shallow_clone).collect();
        let ptrs: Vec<*const c_void> = hooked.iter().map(|t| t.as_ptr().cast()).collect();
        let mut err = [0u8; 1024];
        // SAFETY: live tensor handles; `ctx` stays valid while the hooks are set (the reducer
        // owns the box and clears the hooks in `drop` before the box goes).
        let rc = unsafe {
            selfsup_set_grad_ready_hooks(
                ptrs.as_ptr(),
                ptrs.len(),
                grad_ready,
                std::ptr::from_ref::<Shared>(&shared) as *mut c_void,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if rc != 0 {
            return Err(DistError::Collective {
                op: "all_reduce",
                rank: shared.group.rank(),
                world: shared.group.world_size(),
                msg: format!("gradient hooks: {}", crate::shim_message(&err)),
            });
        }
        Ok(GradReducer { shared, hooked })
    }

    /// Parameter indices of each bucket (indices into the parameters that require a
    /// gradient, in the order given to [`GradReducer::new`]), in the order they are started.
    pub fn buckets(&self) -> &[Vec<usize>] {
        &self.shared.buckets
    }

    /// Call before the step's backward: from here on, complete buckets start as their
    /// gradients arrive.
    pub fn arm(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.shared.params.len();
        *st = State {
            armed: self.shared.group.world_size() > 1,
            ready: vec![false; n],
            missing: self.shared.buckets.iter().map(Vec::len).collect(),
            ..State::default()
        };
    }

    /// Call after backward: starts the buckets not started yet, waits for every bucket and
    /// writes each gradient back as its mean over the ranks, then sends `means` (one-element
    /// tensors: replaced by their mean over the ranks) and `flags` (come back summed) as one
    /// more message ([`crate::average_in_place`]). Returns how many buckets were started
    /// during backward. A no-op (0) at world size 1.
    pub fn finish(&self, means: &[Tensor], flags: &mut [f32]) -> Result<usize> {
        let shared = &self.shared;
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.armed = false;
        let world = shared.group.world_size();
        let outcome = (|| {
            if let Some(e) = st.error.take() {
                return Err(e);
            }
            if world == 1 {
                return Ok(());
            }
            while st.next < shared.buckets.len() {
                let b = st.next;
                st.next += 1;
                shared.start(&mut st, b)?;
            }
            let _no_grad = tch::no_grad_guard();
            // The gradients' kind and device, for the loss, metrics and flags too, as in the
            // one bucket of `average_gradients`.
            let (kind, device) = st
                .started
                .first()
                .map_or((Kind::Float, Device::Cpu), |(b, _, _)| (b.kind(), b.device()));
            for (buffer, members, work) in std::mem::take(&mut st.started) {
                work.wait()?;
                unpack_means(&buffer, &shared.grads(&members), &mut [], world)?;
            }
            average_in_place_as(shared.group.as_ref(), means, flags, kind, device)
        })();
        let early = st.early;
        st.started.clear();
        outcome.map(|()| early)
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        let ptrs: Vec<*const c_void> = self.hooked.iter().map(|t| t.as_ptr().cast()).collect();
        // SAFETY: the tensors the hooks were set on, still alive; after this no hook refers to
        // `shared`.
        unsafe { selfsup_clear_grad_ready_hooks(ptrs.as_ptr(), ptrs.len()) }
    }
}
