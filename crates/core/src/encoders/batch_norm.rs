//! Batch norm as PyTorch builds it (`nn.BatchNorm1d/2d`), and synchronised batch norm for
//! data-parallel jobs (`nn.SyncBatchNorm`, Ioffe & Szegedy 2015 over the whole global batch).
//!
//! Every batch norm of the encoders and heads is a [`BatchNorm`]. One built while a
//! [`sync_batch_norm`] scope is open on the thread keeps that scope's process group, and in
//! training normalises with the mean and variance of the global batch: each rank computes its
//! shard's count, mean and sum of squared deviations per channel, the ranks gather them
//! (differentiably: the gradient of every rank's loss reaches every rank's statistics, as in
//! PyTorch's `SyncBatchNorm` backward) and combine them with Chan et al.'s parallel variance
//! formula. N ranks at batch `B / N` then compute what one process computes at batch `B`,
//! running statistics included. The trainer opens the scope while it builds the method when
//! `train.sync_batch_norm` is set in a job. In evaluation, at world size 1, or outside a scope,
//! it is tch's batch norm.
//!
//! **Split batch norm** (the `SplitBatchNorm` of MoCo's CIFAR-10 demo, which simulates the
//! per-GPU statistics of multi-GPU training on one device): while a [`split_batch_norm`] scope
//! of `s` sub-batches is open on the thread, a training-mode forward normalises each of `s`
//! contiguous sub-batches of its input with that sub-batch's own statistics, so the network
//! runs the whole batch at once instead of `s` passes of `N/s`: in one call with the input
//! viewed as `(N/s, s·C, ...)`, or, for a batch norm followed by ReLU on the CPU, in one fused
//! autograd function that runs each sub-batch where it lies in memory, into one output (no
//! copy, layout kept, nothing concatenated). The running
//! statistics become the mean over the sub-batches of what each would have left,
//! `(1 − m)·r + m·mean_k(stat_k)`, as the demo's. A layer that
//! synchronises over a job normalises with the global batch and ignores the split.
use std::cell::{Cell, RefCell};
use std::os::raw::{c_char, c_int, c_void};
use std::sync::Arc;

use selfsup_dist::{all_gather_with_grad, Collectives};
use tch::{nn, Kind, Tensor};

thread_local! {
    static SYNC_GROUP: RefCell<Option<Arc<dyn Collectives>>> = const { RefCell::new(None) };
    static SPLITS: Cell<i64> = const { Cell::new(1) };
}

/// While alive, training-mode batch norms run on this thread normalise `splits` contiguous
/// sub-batches of their input separately (see the module docs); dropping it restores the
/// previous count.
#[derive(Debug)]
#[must_use = "batch norms split the batch only while the scope is alive"]
pub struct SplitBatchNormScope {
    previous: i64,
}

/// Opens a split-batch-norm scope of `splits` sub-batches (1: no split) until the returned
/// guard is dropped.
pub fn split_batch_norm(splits: i64) -> SplitBatchNormScope {
    SplitBatchNormScope { previous: SPLITS.with(|s| s.replace(splits.max(1))) }
}

impl Drop for SplitBatchNormScope {
    fn drop(&mut self) {
        SPLITS.with(|s| s.set(self.previous));
    }
}

/// While alive, batch norms built on this thread synchronise over its group (see the module
/// docs); dropping it restores the previous scope.
#[derive(Debug)]
#[must_use = "batch norms are synchronised only while the scope is alive"]
pub struct SyncBatchNormScope {
    previous: Option<Arc<dyn Collectives>>,
}

/// Opens a synchronised-batch-norm scope over `group` for the modules built on this thread
/// until the returned guard is dropped.
pub fn sync_batch_norm(group: Arc<dyn Collectives>) -> SyncBatchNormScope {
    let previous = SYNC_GROUP.with(|g| g.borrow_mut().replace(group));
    SyncBatchNormScope { previous }
}

impl Drop for SyncBatchNormScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SYNC_GROUP.with(|g| *g.borrow_mut() = previous);
    }
}

/// BatchNorm config as PyTorch builds it: weight 1, bias 0, eps 1e-5, momentum 0.1. tch's
/// default draws the weight uniformly from `[0, 1)` out of libtorch's global generator, which
/// is neither PyTorch's init nor reproducible where that generator is not seeded; this is why
/// these helpers exist.
pub fn pytorch_bn() -> nn::BatchNormConfig {
    nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.),
        bs_init: nn::Init::Const(0.),
        ..Default::default()
    }
}

/// A batch norm layer: tch's, plus the process group of a synchronised one.
#[derive(Debug)]
pub struct BatchNorm {
    inner: nn::BatchNorm,
    eps: f64,
    momentum: f64,
    sync: Option<Arc<dyn Collectives>>,
}

impl BatchNorm {
    /// Batch norm over `c` channels of an `nd`-d input (1: `(N, C)` or `(N, C, L)`, 2:
    /// `(N, C, H, W)`), variables `weight`, `bias`, `running_mean`, `running_var` under `p`
    /// (those of `nn.BatchNorm1d/2d`); synchronised when built inside a [`sync_batch_norm`]
    /// scope.
    pub fn new(p: nn::Path, nd: usize, c: i64, cfg: nn::BatchNormConfig) -> Self {
        let (eps, momentum) = (cfg.eps, cfg.momentum);
        let inner = match nd {
            1 => nn::batch_norm1d(p, c, cfg),
            2 => nn::batch_norm2d(p, c, cfg),
            _ => nn::batch_norm3d(p, c, cfg),
        };
        let sync = SYNC_GROUP.with(|g| g.borrow().clone());
        BatchNorm { inner, eps, momentum, sync }
    }

    /// Whether this layer synchronises its training statistics across ranks.
    pub fn is_synchronised(&self) -> bool {
        self.sync.as_ref().is_some_and(|g| g.world_size() > 1)
    }

    /// The running mean (`(C,)`).
    pub fn running_mean(&self) -> &Tensor {
        &self.inner.running_mean
    }

    /// The running variance (`(C,)`).
    pub fn running_var(&self) -> &Tensor {
        &self.inner.running_var
    }

    /// Training-mode forward over the global batch (see the module docs).
    ///
    /// # Shapes
    /// `xs`: `(N, C, ...)`, the same `N` on every rank; returns the same shape and kind.
    pub fn f_forward_sync(
        &self,
        group: &Arc<dyn Collectives>,
        xs: &Tensor,
    ) -> selfsup_dist::Result<Tensor> {
        let size = xs.size();
        let c = size[1];
        let dims: Vec<i64> = (0..size.len() as i64).filter(|d| *d != 1).collect();
        let mut shape = vec![1i64; size.len()];
        shape[1] = c;
        let x = xs.f_to_kind(Kind::Float)?;
        let n_local = (xs.numel() as i64 / c) as f64;
        let mean = x.f_mean_dim(dims.as_slice(), true, Kind::Float)?;
        let m2 =
            x.f_sub(&mean)?.f_square()?.f_sum_dim_intlist(dims.as_slice(), false, Kind::Float)?;
        let stats = Tensor::f_stack(&[mean.f_view([c])?, m2], 0)?.f_unsqueeze(0)?;
        // (world, 2, C): every rank's shard mean and sum of squared deviations.
        let all = all_gather_with_grad(group, &stats)?;
        let world = all.size()[0] as f64;
        let total = n_local * world;
        let means = all.f_select(1, 0)?;
        let global_mean = means.f_mean_dim(0, false, Kind::Float)?;
        let spread =
            means.f_sub(&global_mean)?.f_square()?.f_sum_dim_intlist(0, false, Kind::Float)?;
        let m2_total = all
            .f_select(1, 1)?
            .f_sum_dim_intlist(0, false, Kind::Float)?
            .f_add(&spread.f_mul_scalar(n_local)?)?;
        let var = m2_total.f_div_scalar(total)?;
        {
            let _no_grad = tch::no_grad_guard();
            let m = self.momentum;
            let unbiased = m2_total.f_div_scalar((total - 1.0).max(1.0))?;
            let rm = &self.inner.running_mean;
            let rv = &self.inner.running_var;
            rm.shallow_clone().f_copy_(&(rm * (1.0 - m) + global_mean.detach() * m))?;
            rv.shallow_clone().f_copy_(&(rv * (1.0 - m) + unbiased.detach() * m))?;
        }
        let inv_std = var.f_add_scalar(self.eps)?.f_rsqrt()?.f_view(shape.as_slice())?;
        let mut y = x.f_sub(&global_mean.f_view(shape.as_slice())?)?.f_mul(&inv_std)?;
        if let Some(w) = &self.inner.ws {
            y = y.f_mul(&w.f_view(shape.as_slice())?)?;
        }
        if let Some(b) = &self.inner.bs {
            y = y.f_add(&b.f_view(shape.as_slice())?)?;
        }
        Ok(y.f_to_kind(xs.kind())?)
    }
}

impl nn::ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match &self.sync {
            Some(g) if train && g.world_size() > 1 => {
                // A collective fails only when the job is broken (a rank has gone); the module
                // interface has no error path, so this ends the process with the reason.
                self.f_forward_sync(g, xs)
                    .unwrap_or_else(|e| panic!("synchronised batch norm: {e}"))
            }
            _ => match SPLITS.with(Cell::get) {
                s if train && s > 1 && xs.size()[0] >= s => self.forward_split(xs, s, false),
                _ => deterministic_layout(xs, train, |xs| self.inner.forward_t(xs, train)),
            },
        }
    }
}

/// `norm(xs)`, libtorch's batch norm of `xs` (or a function of it), except in training in a
/// deterministic CPU run (oneDNN off, see `determinism`), where a 4-d `xs` that is not contiguous
/// is normalised as a contiguous (NCHW) copy and the output returned in `xs`'s channels-last
/// format, and one without a map, `(N, C)` or `(N, C, 1, 1)`, as `(1, C, N)` (or `(1, C, N, 1)`).
/// libtorch's channels-last batch norm sums every channel in per-thread partial sums (a
/// `threads × C` buffer, forward and backward), so its bits depend on the thread count, and it
/// takes every input without a map as channels-last ("NC11 is also channels last",
/// `aten/src/ATen/native/cpu/batch_norm_kernel.cpp`): a channels-last context encoder (its
/// discriminator's norms) and SimCLR's and instance discrimination's heads (1-d norms) trained
/// at 1 and at 2 threads ended with other weights. Its NCHW kernels take one channel a task,
/// each summed in one order. The fused batch norm + ReLU ([`BatchNorm::forward_relu_t`]) fixes
/// its sums by blocks and takes both formats as they are.
///
/// # Shapes
/// `xs`: `(N, C, ...)`; returns `norm`'s output, `(N, C, H, W)` channels-last where `xs` is,
/// contiguous for an input without a map.
pub fn deterministic_layout(
    xs: &Tensor,
    train: bool,
    norm: impl FnOnce(&Tensor) -> Tensor,
) -> Tensor {
    if !train || xs.device() != tch::Device::Cpu || crate::determinism::mkldnn_enabled() {
        return norm(xs);
    }
    let size = xs.size();
    if size.len() >= 2 && size[2..].iter().all(|&s| s == 1) {
        // `(1, C, N, 1, ...)`: the same statistics (over the `N` values of each channel, the
        // running variance with `N - 1`), on the NCHW kernels; the same rank, but `(N, C)`'s.
        let (n, c) = (size[0], size[1]);
        let mut wide = vec![1, c, n];
        wide.resize(size.len().max(3), 1);
        let y = norm(&xs.reshape([n, c]).tr().contiguous().view(wide.as_slice()));
        return y.view([c, n]).tr().contiguous().view(size.as_slice());
    }
    if xs.dim() != 4 || xs.is_contiguous() {
        return norm(xs);
    }
    let y = norm(&xs.contiguous());
    if crate::precision::is_channels_last(xs) {
        // A 4-d tensor: not an error.
        crate::precision::to_channels_last(&y).unwrap_or(y)
    } else {
        y
    }
}

extern "C" {
    fn selfsup_batch_norm_relu(
        x: *const c_void,
        r: *const c_void,
        w: *const c_void,
        b: *const c_void,
        rm: *const c_void,
        rv: *const c_void,
        momentum: f64,
        eps: f64,
        wr: *const c_void,
        br: *const c_void,
        rmr: *const c_void,
        rvr: *const c_void,
        momentum_r: f64,
        eps_r: f64,
        splits: i64,
        out: *mut *mut c_void,
        out2: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Whether the fused batch norm + ReLU may run: not with `SELFSUP_FUSED_BN=off` (read once).
fn fused_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SELFSUP_FUSED_BN").as_deref() != Ok("off"))
}

impl BatchNorm {
    /// `relu(self.forward_t(xs, train))`. In training, on a dense (NCHW or channels-last) 4-d
    /// CPU input of float or bfloat16, for a layer that is not synchronised and has its affine
    /// parameters, this is one fused autograd function (`csrc/bn_relu.cpp`: fewer passes over
    /// the activation than ATen's three kernels forward and three backward, and no separate
    /// ReLU input kept), with the same running-statistics update; its sums are taken in fixed
    /// pieces, so the result does not depend on the thread count. Inside a
    /// [`split_batch_norm`] scope each sub-batch takes it. Anything else takes tch's batch norm
    /// and ReLU. It has no double backward (`create_graph`: an error, not a wrong gradient).
    /// `SELFSUP_FUSED_BN=off` leaves every layer to tch's batch norm and ReLU (for measuring,
    /// and for counting the operators a CUDA step runs: `cargo xtask bench ops --cuda-paths`).
    ///
    /// A contiguous 2-d input (`BatchNorm1d` on features: the projection heads) takes the
    /// same kernel as `(N, C, 1, 1)`, which is channels-last: rows of `C` values.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)` or `(N, C)` (or any `(N, C, ...)` off the fused path); returns the
    /// same shape.
    pub fn forward_relu_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let fused = |xs: &Tensor| {
            self.f_fused_relu(xs, None, false, 1)
                .unwrap_or_else(|e| panic!("fused batch norm + ReLU: {e}"))
                .0
        };
        let affine = self.affine().is_some();
        if let (true, &[n, c]) = (affine, &xs.size()[..]) {
            if train && xs.is_contiguous() {
                let x4 = xs.view([n, c, 1, 1]);
                if self.fusable(&x4) {
                    return fused(&x4).view([n, c]);
                }
            }
        }
        let split = SPLITS.with(Cell::get);
        if affine && train && self.fusable(xs) {
            fused(xs)
        } else if train && split > 1 && !self.is_synchronised() && xs.size()[0] >= split {
            self.forward_split(xs, split, true)
        } else {
            nn::ModuleT::forward_t(self, xs, train).relu()
        }
    }

    /// `relu(self.forward_t(xs, train) + residual)`, the end of a residual block (He et al.
    /// 2016). In training, where [`Self::forward_relu_t`] takes the fused kernel and the
    /// residual has `xs`'s shape and kind, the add is fused into it too (`csrc/bn_relu.cpp`:
    /// the residual read once forward, its gradient written in the pass that writes `xs`'s, no
    /// separate add and ReLU, and no rounding of the norm's output to bfloat16 before the add);
    /// a residual in another layout is copied into `xs`'s first. Anything else takes tch's
    /// batch norm, the add and ReLU.
    ///
    /// # Shapes
    /// `xs`, `residual`: `(N, C, H, W)` (any `(N, C, ...)` off the fused path); returns the
    /// same shape.
    pub fn forward_add_relu_t(&self, xs: &Tensor, residual: &Tensor, train: bool) -> Tensor {
        self.relu_out(xs, Some((residual, None)), train, false).0
    }

    /// `relu(self.forward_t(xs, train) [+ residual])` for an output that two consumers take
    /// (in a ResNet, a block's output feeds the next block's first convolution and its
    /// shortcut): two handles to the same values, one for each. On the fused path of
    /// [`Self::forward_relu_t`] / [`Self::forward_add_relu_t`] they are two outputs of the
    /// kernel's autograd function, whose backward adds the two consumers' gradients in its own
    /// passes (autograd would add them in a pass of its own before it, reading both and writing
    /// the sum); elsewhere the same tensor twice. Neither may be modified in place.
    ///
    /// # Shapes
    /// As [`Self::forward_add_relu_t`]; both outputs have `xs`'s shape.
    pub fn forward_relu_pair_t(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        train: bool,
    ) -> (Tensor, Tensor) {
        let (y, second) = self.relu_out(xs, residual.map(|r| (r, None)), train, true);
        let second = second.unwrap_or_else(|| y.shallow_clone());
        (y, second)
    }

    /// `relu(self.forward_t(xs, train) + shortcut_bn.forward_t(shortcut, train))` as the
    /// output pair of [`Self::forward_relu_pair_t`]: the end of a downsampling ResNet block,
    /// whose shortcut (a strided 1×1 convolution's output) has a batch norm of its own. Where
    /// both norms take the fused kernel and `shortcut` has `xs`'s shape and kind, the
    /// shortcut's norm runs in the same passes (`csrc/bn_relu.cpp`: its statistics, running
    /// statistics and gradients as its own forward and backward would make them, without its
    /// output and that output's gradient written and read back); anything else takes
    /// `shortcut_bn`'s forward, then [`Self::forward_relu_pair_t`].
    ///
    /// # Shapes
    /// `xs`, `shortcut`: `(N, C, H, W)`; both outputs have `xs`'s shape.
    pub fn forward_add_normed_relu_pair_t(
        &self,
        xs: &Tensor,
        shortcut_bn: &BatchNorm,
        shortcut: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor) {
        let (y, second) = self.relu_out(xs, Some((shortcut, Some(shortcut_bn))), train, true);
        let second = second.unwrap_or_else(|| y.shallow_clone());
        (y, second)
    }

    /// `relu(bn(xs) [+ residual])`, the residual through its own norm where one comes with it,
    /// fused where the kernel takes it, with the output's second handle (see
    /// [`Self::forward_relu_pair_t`]) when `twice` and the kernel made one.
    fn relu_out(
        &self,
        xs: &Tensor,
        residual: Option<(&Tensor, Option<&BatchNorm>)>,
        train: bool,
        twice: bool,
    ) -> (Tensor, Option<Tensor>) {
        if self.affine().is_some() {
            let matches = |(r, bn): (&Tensor, Option<&BatchNorm>)| {
                r.size() == xs.size()
                    && r.kind() == xs.kind()
                    && r.device() == xs.device()
                    && bn.is_none_or(|bn| bn.affine().is_some() && bn.fusable(r))
            };
            if train && self.fusable(xs) && residual.is_none_or(matches) {
                return self
                    .f_fused_relu(xs, residual, twice, 1)
                    .unwrap_or_else(|e| panic!("fused batch norm (+ add) + ReLU: {e}"));
            }
        }
        match residual {
            Some((r, None)) => ((nn::ModuleT::forward_t(self, xs, train) + r).relu(), None),
            Some((r, Some(bn))) => {
                let r = nn::ModuleT::forward_t(bn, r, train);
                self.relu_out(xs, Some((&r, None)), train, twice)
            }
            None => (self.forward_relu_t(xs, train), None),
        }
    }

    /// The weight and bias, where the layer has them.
    fn affine(&self) -> Option<(&Tensor, &Tensor)> {
        self.inner.ws.as_ref().zip(self.inner.bs.as_ref())
    }

    /// Whether a training-mode forward of `xs` may take the fused batch norm + ReLU.
    fn fusable(&self, xs: &Tensor) -> bool {
        SPLITS.with(Cell::get) == 1 && self.kernel_takes(xs)
    }

    /// Whether the fused kernel takes `xs` for this layer (split or not).
    fn kernel_takes(&self, xs: &Tensor) -> bool {
        let size = xs.size();
        let kind_ok = matches!(xs.kind(), Kind::Float | Kind::BFloat16);
        !self.is_synchronised()
            && size.len() == 4
            && xs.device() == tch::Device::Cpu
            && fused_enabled()
            && kind_ok
            && size[0] * size[2] * size[3] > 1
            && (crate::precision::is_channels_last(xs) || xs.is_contiguous())
            && [self.inner.ws.as_ref(), self.inner.bs.as_ref()]
                .into_iter()
                .all(|t| t.is_some_and(|t| t.kind() == Kind::Float))
    }

    /// The fused batch norm + ReLU of `xs` (+ `residual` before the ReLU, through its own norm
    /// where one comes with it, which has its affine parameters) with this layer's weight,
    /// bias, momentum and eps, its running statistics updated in place; with `twice`, also the
    /// output's second handle (see [`Self::forward_relu_pair_t`]); with `splits` > 1 (no
    /// residual, one handle), each of that many sub-batches normalised on its own (see
    /// [`Self::forward_split`]).
    fn f_fused_relu(
        &self,
        xs: &Tensor,
        residual: Option<(&Tensor, Option<&BatchNorm>)>,
        twice: bool,
        splits: i64,
    ) -> Result<(Tensor, Option<Tensor>), String> {
        let (w, b) = self.affine().ok_or("the norm has no affine parameters")?;
        let (rm, rv) = (&self.inner.running_mean, &self.inner.running_var);
        let mut second: *mut c_void = std::ptr::null_mut();
        let out2: *mut *mut c_void = if twice { &mut second } else { std::ptr::null_mut() };
        let (r, rbn) = residual.unzip();
        let rbn = rbn.flatten();
        let rnorm = match rbn {
            Some(bn) => Some(bn.affine().ok_or("the shortcut's norm has no affine parameters")?),
            None => None,
        };
        let ptr = |t: Option<&Tensor>| t.map_or(std::ptr::null(), |t| t.as_ptr().cast());
        // SAFETY: every handle is a live tensor (tch's `C_tensor` is an `at::Tensor`); `out` and
        // `err` are `shim_tensor`'s, valid for the call, and `out2` is null or `second`.
        let y = crate::ops::shim_tensor(|out, err, len| unsafe {
            selfsup_batch_norm_relu(
                xs.as_ptr().cast(),
                ptr(r),
                w.as_ptr().cast(),
                b.as_ptr().cast(),
                rm.as_ptr().cast(),
                rv.as_ptr().cast(),
                self.momentum,
                self.eps,
                ptr(rnorm.map(|(w, _)| w)),
                ptr(rnorm.map(|(_, b)| b)),
                ptr(rbn.map(|bn| &bn.inner.running_mean)),
                ptr(rbn.map(|bn| &bn.inner.running_var)),
                rbn.map_or(0.0, |bn| bn.momentum),
                rbn.map_or(0.0, |bn| bn.eps),
                splits,
                out,
                out2,
                err,
                len,
            )
        })?
        .ok_or_else(|| "the shim made no tensor".to_string())?;
        // SAFETY: a non-null `second` is a new `at::Tensor` handle the shim made, now ours.
        let second = (!second.is_null()).then(|| unsafe { Tensor::from_ptr(second.cast()) });
        Ok((y, second))
    }
}

impl BatchNorm {
    /// Training-mode forward with own statistics for each of `s` contiguous sub-batches of
    /// `xs` (`torch.chunk`'s: all of `ceil(N/s)` samples but the last), running statistics set
    /// to the mean of the sub-batches' updates (see the module docs); with `relu`, followed by
    /// ReLU, fused into the norm where the kernel takes every sub-batch: one autograd function
    /// for the whole batch, each sub-batch read and written where it lies (no copy, layout
    /// kept, no concatenation).
    ///
    /// # Shapes
    /// `xs`: `(N, C, ...)`; returns the same shape.
    fn forward_split(&self, xs: &Tensor, s: i64, relu: bool) -> Tensor {
        let size = xs.size();
        let (n, c) = (size[0], size[1]);
        let (rm, rv) = (&self.inner.running_mean, &self.inner.running_var);
        let chunks = xs.chunk(s, 0);
        let takes = |x: &Tensor| self.kernel_takes(x);
        if relu && self.affine().is_some() && takes(xs) && chunks.iter().all(takes) {
            return self
                .f_fused_relu(xs, None, false, s)
                .unwrap_or_else(|e| panic!("split batch norm + ReLU: {e}"))
                .0;
        }
        let bn = |x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, m: &Tensor, v: &Tensor| {
            deterministic_layout(x, true, |x| {
                Tensor::batch_norm(x, w, b, Some(m), Some(v), true, self.momentum, self.eps, false)
            })
        };
        let (y, means, vars) = if n % s != 0 {
            // Each sub-batch where it lies (`torch.chunk`'s pieces).
            let k = chunks.len() as i64;
            let (m, v) = (rm.repeat([k]).view([k, c]), rv.repeat([k]).view([k, c]));
            let (ws, bs) = (self.inner.ws.as_ref(), self.inner.bs.as_ref());
            let parts: Vec<Tensor> = chunks
                .iter()
                .enumerate()
                .map(|(i, x)| bn(x, ws, bs, &m.get(i as i64), &v.get(i as i64)))
                .collect();
            (Tensor::cat(&parts, 0), m, v)
        } else {
            // (N, C, ...) → (s, N/s, C, ...) → (N/s, s·C, ...): sub-batch k in channels k·C..
            let mut chunked = vec![s, n / s];
            chunked.extend_from_slice(&size[1..]);
            let mut wide = size.clone();
            (wide[0], wide[1]) = (n / s, s * c);
            let x = xs.reshape(chunked.as_slice()).transpose(0, 1).reshape(wide.as_slice());
            let repeat = |t: &Option<Tensor>| t.as_ref().map(|t| t.repeat([s]));
            let (w, b) = (repeat(&self.inner.ws), repeat(&self.inner.bs));
            let (m, v) = (rm.repeat([s]).view([s, c]), rv.repeat([s]).view([s, c]));
            let (ms, vs) = (m.view([s * c]), v.view([s * c]));
            let y = bn(&x, w.as_ref(), b.as_ref(), &ms, &vs);
            let mut back = vec![n / s, s];
            back.extend_from_slice(&size[1..]);
            (y.reshape(back.as_slice()).transpose(0, 1).reshape(size.as_slice()), m, v)
        };
        tch::no_grad(|| {
            // Through `data()`, as the demo's `.data.copy_`: graphs that saved the buffers
            // (earlier passes of the same step) are not invalidated.
            rm.data().copy_(&means.mean_dim(0, false, Kind::Float));
            rv.data().copy_(&vars.mean_dim(0, false, Kind::Float));
        });
        if relu {
            y.relu()
        } else {
            y
        }
    }
}

/// `nn.BatchNorm2d(c)` as PyTorch builds it (see [`pytorch_bn`]); synchronised inside a
/// [`sync_batch_norm`] scope.
pub fn batch_norm2d(p: nn::Path, c: i64) -> BatchNorm {
    BatchNorm::new(p, 2, c, pytorch_bn())
}

/// `nn.BatchNorm1d(c)` as PyTorch builds it (see [`pytorch_bn`]); synchronised inside a
/// [`sync_batch_norm`] scope.
pub fn batch_norm1d(p: nn::Path, c: i64) -> BatchNorm {
    BatchNorm::new(p, 1, c, pytorch_bn())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tch::nn::ModuleT;
    use tch::Device;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
    }

    /// Output, input gradient, weight and bias gradients, running mean and variance of a batch
    /// norm (weight 1.5, bias −0.25) over `x`, with loss `Σ c ⊙ y`.
    fn run(bn: &BatchNorm, x: &Tensor, c: &Tensor) -> Vec<Vec<f32>> {
        let x = x.copy().set_requires_grad(true);
        let y = bn.forward_t(&x, true);
        (&y * c).sum(Kind::Float).backward();
        let (w, b) = (bn.inner.ws.as_ref().unwrap(), bn.inner.bs.as_ref().unwrap());
        vec![
            values(&y),
            values(&x.grad()),
            values(&w.grad()),
            values(&b.grad()),
            values(bn.running_mean()),
            values(bn.running_var()),
        ]
    }

    fn layer(vs: &nn::VarStore) -> BatchNorm {
        let bn = batch_norm2d(vs.root() / "bn", 3);
        tch::no_grad(|| {
            let _ = bn.inner.ws.as_ref().unwrap().shallow_clone().fill_(1.5);
            let _ = bn.inner.bs.as_ref().unwrap().shallow_clone().fill_(-0.25);
        });
        bn
    }

    /// What `run` returns, for the fused batch norm + ReLU against tch's batch norm then ReLU,
    /// on an `x` of `kind` (channels-last or NCHW), over `c` channels (weight and bias varied per channel
    /// so that some channels are mostly cut by the ReLU), loss `Σ g ⊙ y`.
    fn relu_pair(kind: Kind, shape: &[i64], channels_last: bool) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        fused_pair(kind, shape, channels_last, None, Uses::One)
    }

    /// How the output of [`fused_pair`] is taken: as one output, or as the two of
    /// `forward_relu_pair_t` (against one output taken twice by tch's ops): both, loss
    /// `Σ g ⊙ a + Σ b² / 2`; the first only, `Σ g ⊙ a`; the second only, `Σ g ⊙ b`.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Uses {
        One,
        Both,
        First,
        Second,
    }

    /// The residual [`fused_pair`] adds before the ReLU, in the given layout (channels-last or
    /// not): as it is, or through a batch norm of its own (a downsampling shortcut's).
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Residual {
        Plain(bool),
        Normed(bool),
    }

    /// As [`relu_pair`], with a residual added before the ReLU when there is one:
    /// `forward_add_relu_t` against tch's batch norm, add and ReLU, or for a normed one
    /// `forward_add_normed_relu_pair_t` against tch's two batch norms, add and ReLU. The
    /// residual's gradient comes last, after its norm's weight and bias gradients and running
    /// statistics where it has one. The reference with a residual or two uses runs in float on
    /// the same values: tch's bfloat16 path rounds the norms' outputs before the add, which
    /// moves the ReLU's cut for sums near 0 (the kernel adds in float), and a value on either
    /// side of it has a gradient of `dy` or 0; it rounds the sum of the two uses' gradients
    /// too (the kernel adds them in float).
    fn fused_pair(
        kind: Kind,
        shape: &[i64],
        channels_last: bool,
        residual: Option<Residual>,
        uses: Uses,
    ) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let c = shape[1];
        // Values from a formula, not libtorch's generator, which the tests running beside this
        // one draw from at the same time.
        let n: i64 = shape.iter().product();
        let wave = |f: f64| (Tensor::arange(n, (Kind::Float, Device::Cpu)) * f).sin().view(shape);
        let x = (wave(0.7) * 2.0 + wave(0.013) + 0.5).to_kind(kind);
        let x = if channels_last { crate::precision::to_channels_last(&x).unwrap() } else { x };
        let g = (wave(1.3) + wave(0.05) * 0.5).to_kind(kind);
        let r = residual.map(|(Residual::Plain(cl) | Residual::Normed(cl))| {
            let r = (wave(0.31) * 1.5 - wave(0.021) * 0.5).to_kind(kind);
            if cl {
                crate::precision::to_channels_last(&r).unwrap()
            } else {
                r
            }
        });
        let run_one = |fused: bool| {
            let in_float = !fused && (residual.is_some() || uses != Uses::One);
            let float = |t: &Tensor| if in_float { t.to_kind(Kind::Float) } else { t.copy() };
            let vs = nn::VarStore::new(Device::Cpu);
            let bn = match shape.len() {
                2 => batch_norm1d(vs.root() / "bn", c),
                _ => batch_norm2d(vs.root() / "bn", c),
            };
            tch::no_grad(|| {
                let ramp = Tensor::arange(c, (Kind::Float, Device::Cpu)) / c as f64;
                bn.inner.ws.as_ref().unwrap().shallow_clone().copy_(&(&ramp + 0.5));
                bn.inner.bs.as_ref().unwrap().shallow_clone().copy_(&(ramp - 0.6));
            });
            let xg = float(&x).set_requires_grad(true);
            // Features go through the kernel as (N, C, 1, 1).
            let x4 =
                if shape.len() == 2 { xg.view([shape[0], c, 1, 1]) } else { xg.shallow_clone() };
            assert!(!fused || bn.fusable(&x4), "the fused path is taken");
            let rg = r.as_ref().map(|r| float(r).set_requires_grad(true));
            // The shortcut's norm, with other weights and biases.
            let rbn = matches!(residual, Some(Residual::Normed(_))).then(|| {
                let bn = batch_norm2d(vs.root() / "shortcut", c);
                tch::no_grad(|| {
                    let ramp = Tensor::arange(c, (Kind::Float, Device::Cpu)) / c as f64;
                    bn.inner.ws.as_ref().unwrap().shallow_clone().copy_(&(&ramp * 0.5 + 0.8));
                    bn.inner.bs.as_ref().unwrap().shallow_clone().copy_(&(0.2 - ramp));
                });
                bn
            });
            let (y, second) = match (&rg, &rbn, fused) {
                (Some(r), Some(rbn), true) => {
                    assert!(rbn.fusable(r), "the shortcut's norm is fused");
                    let (a, b) = bn.forward_add_normed_relu_pair_t(&xg, rbn, r, true);
                    assert!(a.equal(&b), "two handles to the same values");
                    (a, (uses != Uses::One).then_some(b))
                }
                (Some(r), Some(rbn), false) => {
                    ((bn.forward_t(&xg, true) + rbn.forward_t(r, true)).relu(), None)
                }
                _ if fused && uses != Uses::One => {
                    let (a, b) = bn.forward_relu_pair_t(&xg, rg.as_ref(), true);
                    assert!(a.equal(&b), "two handles to the same values");
                    (a, Some(b))
                }
                (None, _, true) => (bn.forward_relu_t(&xg, true), None),
                (None, _, false) => (bn.forward_t(&xg, true).relu(), None),
                (Some(r), _, true) => (bn.forward_add_relu_t(&xg, r, true), None),
                (Some(r), _, false) => ((bn.forward_t(&xg, true) + r).relu(), None),
            };
            // The reference (and the one-output kernel) takes its one output twice.
            let second = second.unwrap_or_else(|| y.shallow_clone());
            assert_eq!(y.kind(), if in_float { Kind::Float } else { kind });
            let g = float(&g);
            let loss = match uses {
                Uses::One | Uses::First => (&y * &g).sum(Kind::Float),
                Uses::Both => (&y * &g).sum(Kind::Float) + second.square().sum(Kind::Float) * 0.5,
                Uses::Second => (&second * &g).sum(Kind::Float),
            };
            loss.backward();
            let (w, b) = (bn.inner.ws.as_ref().unwrap(), bn.inner.bs.as_ref().unwrap());
            let mut out = vec![
                values(&y),
                values(&xg.grad()),
                values(&w.grad()),
                values(&b.grad()),
                values(bn.running_mean()),
                values(bn.running_var()),
            ];
            if let Some(rbn) = &rbn {
                let (w, b) = (rbn.inner.ws.as_ref().unwrap(), rbn.inner.bs.as_ref().unwrap());
                out.extend(
                    [&w.grad(), &b.grad(), rbn.running_mean(), rbn.running_var()].map(values),
                );
            }
            out.extend(rg.map(|r| values(&r.grad())));
            out
        };
        (run_one(true), run_one(false))
    }

    fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>], tol: f32, what: &str) {
        let mut names =
            vec!["output", "input grad", "weight grad", "bias grad", "running mean", "running var"];
        if got.len() == 11 {
            names.extend(["shortcut weight grad", "shortcut bias grad"]);
            names.extend(["shortcut running mean", "shortcut running var"]);
        }
        names.push("residual grad");
        assert_eq!(got.len(), want.len(), "{what}");
        for ((g, w), name) in got.iter().zip(want).zip(names) {
            assert_eq!(g.len(), w.len());
            let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= tol * scale, "{what}: {name} differs by {worst} (scale {scale})");
        }
    }

    #[test]
    fn fused_batch_norm_relu_matches_batch_norm_then_relu() {
        for channels_last in [true, false] {
            // Channels not a multiple of any vector width, more pixels than one block (256),
            // planes not a multiple of the lanes (16).
            let (fused, reference) = relu_pair(Kind::Float, &[6, 19, 9, 11], channels_last);
            assert_close(
                &fused,
                &reference,
                2e-5,
                &format!("float, channels-last {channels_last}"),
            );
            // bfloat16 activations: the same float arithmetic, rounded once on the way out, so
            // within one bfloat16 step (2^-7 relative) of the largest value.
            let (fused, reference) = relu_pair(Kind::BFloat16, &[4, 32, 8, 10], channels_last);
            let what = format!("bfloat16, channels-last {channels_last}");
            assert_close(&fused, &reference, 1.0 / 128.0, &what);
        }
        // NCHW maps of 256 pixels or more are cut into planes (smaller ones into whole images,
        // above); a plane of 323 values is not a multiple of the 16 lanes.
        let (fused, reference) = relu_pair(Kind::Float, &[3, 5, 17, 19], false);
        assert_close(&fused, &reference, 2e-5, "float, NCHW planes");
        let (fused, reference) = relu_pair(Kind::BFloat16, &[3, 5, 17, 19], false);
        assert_close(&fused, &reference, 1.0 / 128.0, "bfloat16, NCHW planes");
    }

    #[test]
    fn fused_batch_norm_add_relu_matches_batch_norm_add_then_relu() {
        // Both layouts, the residual in the input's layout and in the other (copied into the
        // input's), as it is and through a norm of its own (a downsampling shortcut's); NCHW
        // planes and images; shapes with tails as above.
        for (shape, channels_last) in
            [([6, 19, 9, 11], true), ([6, 19, 9, 11], false), ([3, 5, 17, 19], false)]
        {
            for residual in [channels_last, !channels_last]
                .into_iter()
                .flat_map(|cl| [Residual::Plain(cl), Residual::Normed(cl)])
            {
                let what = format!("{shape:?}, channels-last {channels_last}, {residual:?}");
                let (fused, reference) =
                    fused_pair(Kind::Float, &shape, channels_last, Some(residual), Uses::One);
                assert_close(&fused, &reference, 2e-5, &format!("float {what}"));
                // bfloat16 against float on the same values: one rounding on the way out.
                let (fused, reference) =
                    fused_pair(Kind::BFloat16, &shape, channels_last, Some(residual), Uses::One);
                assert_close(&fused, &reference, 1.0 / 128.0, &format!("bfloat16 {what}"));
            }
        }
        // Off the fused path (evaluation, another kind of residual, a split scope), it is tch's
        // batch norm, add and ReLU.
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = layer(&vs);
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let r = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let want = (bn.forward_t(&x, false) + &r).relu();
        assert!(bn.forward_add_relu_t(&x, &r, false).equal(&want), "evaluation");
        let r64 = r.to_kind(Kind::Double);
        let y = bn.forward_add_relu_t(&x, &r64, true);
        assert_eq!(y.kind(), Kind::Double, "a double residual promotes, as tch's add");
        let _split = split_batch_norm(2);
        let y = bn.forward_add_relu_t(&x, &r, true);
        assert!(y.min().double_value(&[]) >= 0.0);
    }

    #[test]
    fn a_forked_output_gets_both_consumers_gradients() {
        for residual in [None, Some(Residual::Plain(true)), Some(Residual::Normed(true))] {
            for uses in [Uses::Both, Uses::First, Uses::Second] {
                let what = format!("residual {residual:?}, {uses:?}");
                let (fused, reference) =
                    fused_pair(Kind::Float, &[6, 19, 9, 11], true, residual, uses);
                assert_close(&fused, &reference, 2e-5, &format!("float, {what}"));
                // bfloat16: the two gradients added in float, not rounded to bfloat16 first.
                let (fused, reference) =
                    fused_pair(Kind::BFloat16, &[4, 32, 8, 10], false, residual, uses);
                assert_close(&fused, &reference, 1.0 / 128.0, &format!("bfloat16, {what}"));
            }
        }
        // Off the fused path, the same tensor twice.
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = layer(&vs);
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let (a, b) = bn.forward_relu_pair_t(&x, None, false);
        assert!(a.equal(&bn.forward_relu_t(&x, false)) && a.equal(&b));
    }

    #[test]
    fn features_take_the_fused_batch_norm_relu_as_one_pixel_maps() {
        // (N, C) features, as a projection head's BatchNorm1d sees them: N not a multiple of
        // the 256-row block, C not a multiple of the vector width.
        let (fused, reference) = relu_pair(Kind::Float, &[300, 37], false);
        assert_close(&fused, &reference, 2e-5, "float features");
        let (fused, reference) = relu_pair(Kind::BFloat16, &[64, 48], false);
        assert_close(&fused, &reference, 1.0 / 128.0, "bfloat16 features");
        // A strided (N, C) view keeps tch's batch norm then ReLU.
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = batch_norm1d(vs.root() / "bn", 3);
        let x = Tensor::arange(24, (Kind::Float, Device::Cpu)).view([3, 8]).sin();
        let y = bn.forward_relu_t(&x.tr(), true);
        assert_eq!(y.size(), [8, 3]);
        assert!(y.min().double_value(&[]) >= 0.0);
    }

    #[test]
    fn the_cpus_bfloat16_rounding_gives_the_same_bits_as_the_software_one() {
        use crate::ops::native_bf16_rounding;
        if !native_bf16_rounding(None) {
            eprintln!("this CPU has no AVX512-BF16: only the software rounding runs here");
            return;
        }
        // Channels-last periods of 1 to 7 vectors (C = 16, 8, 14, 40, 7), a partial last
        // block; NCHW images and planes (17×19) with tails; features.
        let shapes: [&[i64]; 7] = [
            &[4, 16, 9, 9],
            &[5, 8, 7, 11],
            &[3, 14, 10, 9],
            &[2, 40, 6, 7],
            &[6, 7, 5, 5],
            &[2, 3, 17, 19],
            &[70, 24],
        ];
        for shape in shapes {
            for (channels_last, residual) in [
                (true, None),
                (false, None),
                (true, Some(Residual::Plain(true))),
                (false, Some(Residual::Plain(false))),
                (true, Some(Residual::Normed(true))),
                (false, Some(Residual::Normed(false))),
            ] {
                if residual.is_some() && shape.len() == 2 {
                    continue;
                }
                let native =
                    fused_pair(Kind::BFloat16, shape, channels_last, residual, Uses::Both).0;
                native_bf16_rounding(Some(false));
                let software =
                    fused_pair(Kind::BFloat16, shape, channels_last, residual, Uses::Both).0;
                assert!(native_bf16_rounding(Some(true)));
                for (i, (a, b)) in native.iter().zip(&software).enumerate() {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(
                        bits(a) == bits(b),
                        "{shape:?} channels-last {channels_last}, residual {residual:?}: part \
                         {i} differs"
                    );
                }
            }
        }
    }

    #[test]
    fn fused_batch_norm_relu_does_not_depend_on_the_thread_count() {
        let threads = tch::get_num_threads();
        // Channels-last blocks, NCHW images (12×12) and NCHW planes (16×17).
        for (shape, channels_last) in
            [([8, 16, 12, 12], true), ([8, 16, 12, 12], false), ([4, 6, 16, 17], false)]
        {
            // Without and with a residual; bfloat16 as well (with the CPU's conversion, the
            // ReLU mask's words are laid out by piece).
            for (residual, kind) in
                [None, Some(Residual::Plain(channels_last)), Some(Residual::Normed(channels_last))]
                    .into_iter()
                    .flat_map(|r| [(r, Kind::Float), (r, Kind::BFloat16)])
            {
                tch::set_num_threads(1);
                let one = fused_pair(kind, &shape, channels_last, residual, Uses::Both).0;
                tch::set_num_threads(3);
                let three = fused_pair(kind, &shape, channels_last, residual, Uses::Both).0;
                for (i, (a, b)) in one.iter().zip(&three).enumerate() {
                    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                    let what =
                        format!("{kind:?} {shape:?}, channels-last {channels_last}, {residual:?}");
                    assert!(a == b, "{what}: part {i} differs by {worst}");
                }
            }
        }
        tch::set_num_threads(threads);
    }

    #[test]
    fn only_dense_training_inputs_take_the_fused_path() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = layer(&vs);
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        assert!(bn.fusable(&x), "NCHW");
        let cl = crate::precision::to_channels_last(&x).unwrap();
        assert!(bn.fusable(&cl), "channels-last");
        assert!(!bn.fusable(&x.narrow(3, 1, 2)), "a strided view");
        assert!(!bn.fusable(&cl.to_kind(Kind::Double)), "double");
        assert!(!bn.fusable(&Tensor::randn([1, 3, 1, 1], (Kind::Float, Device::Cpu))), "1 value");
        {
            let _split = split_batch_norm(2);
            assert!(!bn.fusable(&cl), "inside a split scope");
        }
        // The other paths give batch norm then ReLU too.
        let want = bn.forward_t(&x, false).relu();
        assert!(bn.forward_relu_t(&x, false).equal(&want), "evaluation");
        let y = bn.forward_relu_t(&x.narrow(3, 1, 2), true);
        assert!(y.min().double_value(&[]) >= 0.0);
    }

    #[test]
    fn two_ranks_normalise_with_the_global_batch_statistics() {
        // Shards with different means, so that per-shard statistics would differ.
        tch::manual_seed(3);
        let x = Tensor::randn([6, 3, 2, 2], (Kind::Float, Device::Cpu))
            + Tensor::from_slice(&[0.0f32, 0.0, 0.0, 4.0, 4.0, 4.0]).view([6, 1, 1, 1]);
        let c = Tensor::randn([6, 3, 2, 2], (Kind::Float, Device::Cpu));
        let vs = nn::VarStore::new(Device::Cpu);
        let full = run(&layer(&vs), &x, &c);
        let (xs, cs) = (values(&x), values(&c));
        let out = selfsup_dist::on_local_ranks(2, Duration::from_secs(30), move |g| {
            let r = g.rank();
            let part = |v: &[f32]| Tensor::from_slice(&v[36 * r..36 * (r + 1)]).view([3, 3, 2, 2]);
            let vs = nn::VarStore::new(Device::Cpu);
            let bn = {
                let _scope = sync_batch_norm(g.clone());
                layer(&vs)
            };
            assert!(bn.is_synchronised());
            let outside = batch_norm2d(vs.root() / "plain", 3);
            assert!(!outside.is_synchronised(), "built after the scope closed");
            let mut got = run(&bn, &part(&xs), &part(&cs));
            // The parameters' gradients: each rank's share, summed over the ranks here (the
            // trainer averages the per-rank means instead).
            for k in [2, 3] {
                let t = Tensor::from_slice(&got[k]);
                g.all_reduce_sum(&t).unwrap();
                got[k] = values(&t);
            }
            got
        })
        .unwrap();
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{what}: {x} vs {y}");
            }
        };
        for (r, got) in out.iter().enumerate() {
            close(&got[0], &full[0][36 * r..36 * (r + 1)], "output");
            close(&got[1], &full[1][36 * r..36 * (r + 1)], "input gradient");
            for (k, what) in [(2, "weight grad"), (3, "bias grad"), (4, "mean"), (5, "var")] {
                close(&got[k], &full[k], what);
            }
        }
    }

    /// A split forward equals each sub-batch through its own pass from the same running
    /// statistics (outputs, input and parameter gradients), the running statistics the mean of
    /// those passes' (the demo's `SplitBatchNorm`); also when the batch does not divide.
    #[test]
    fn split_batch_norm_normalises_each_sub_batch_on_its_own() {
        tch::manual_seed(5);
        for (n, splits) in [(8, 4), (7, 3)] {
            let x = Tensor::randn([n, 3, 2, 2], (Kind::Float, Device::Cpu)) * 2.0 + 1.0;
            let c = Tensor::randn([n, 3, 2, 2], (Kind::Float, Device::Cpu));
            let vs = nn::VarStore::new(Device::Cpu);
            let got = {
                let _split = split_batch_norm(splits);
                run(&layer(&vs), &x, &c)
            };
            // The reference: one fresh layer a sub-batch, from the same start.
            let (mut outs, mut grads) = (Vec::new(), Vec::new());
            let (mut wg, mut bg) = (vec![0f32; 3], vec![0f32; 3]);
            let (mut mean, mut var) = (vec![0f32; 3], vec![0f32; 3]);
            let chunks = x.chunk(splits, 0);
            for (xk, ck) in chunks.iter().zip(c.chunk(splits, 0)) {
                let vs = nn::VarStore::new(Device::Cpu);
                let r = run(&layer(&vs), xk, &ck);
                outs.extend_from_slice(&r[0]);
                grads.extend_from_slice(&r[1]);
                for (acc, k) in [(&mut wg, 2), (&mut bg, 3), (&mut mean, 4), (&mut var, 5)] {
                    for (a, v) in acc.iter_mut().zip(&r[k]) {
                        *a += v / if k >= 4 { chunks.len() as f32 } else { 1.0 };
                    }
                }
            }
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len(), "{what}");
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "{n}/{splits} {what}: {x} vs {y}"
                    );
                }
            };
            close(&got[0], &outs, "output");
            close(&got[1], &grads, "input gradient");
            close(&got[2], &wg, "weight grad");
            close(&got[3], &bg, "bias grad");
            close(&got[4], &mean, "running mean");
            close(&got[5], &var, "running var");
            // Per-sub-batch statistics differ from the whole batch's: the test is not vacuous.
            let vs = nn::VarStore::new(Device::Cpu);
            let whole = run(&layer(&vs), &x, &c);
            assert!(whole[0].iter().zip(&got[0]).any(|(a, b)| (a - b).abs() > 1e-3));
        }
        // The scope ends with its guard; evaluation ignores it.
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = layer(&vs);
        let x = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        let plain = bn.forward_t(&x, false);
        let _split = split_batch_norm(2);
        assert!(bn.forward_t(&x, false).equal(&plain));
    }

    #[test]
    fn a_gradient_of_the_fused_gradient_is_refused() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = layer(&vs);
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let loss = bn.forward_relu_t(&x, true).square().sum(Kind::Float);
        let err = Tensor::f_run_backward(&[&loss], &[&x], true, true).unwrap_err().to_string();
        assert!(err.contains("no double backward"), "{err}");
        // A plain backward through the same graph works.
        assert_eq!(Tensor::f_run_backward(&[&loss], &[&x], false, false).unwrap().len(), 1);
    }

    #[test]
    fn split_batch_norm_then_relu_is_fused_to_the_same_values() {
        for (n, splits, channels_last) in [(8, 4, false), (8, 2, true), (7, 3, false)] {
            let x = Tensor::randn([n, 3, 4, 4], (Kind::Float, Device::Cpu)) * 2.0 + 0.3;
            let x = if channels_last { crate::precision::to_channels_last(&x).unwrap() } else { x };
            let c = Tensor::randn([n, 3, 4, 4], (Kind::Float, Device::Cpu));
            let pass = |fused: bool| {
                let vs = nn::VarStore::new(Device::Cpu);
                let bn = layer(&vs);
                let _split = split_batch_norm(splits);
                let xg = x.copy().set_requires_grad(true);
                let y = if fused {
                    bn.forward_relu_t(&xg, true)
                } else {
                    nn::ModuleT::forward_t(&bn, &xg, true).relu()
                };
                if fused {
                    let layout = crate::precision::is_channels_last(&y);
                    assert_eq!(layout, channels_last, "the output keeps the input's layout");
                }
                (&y * &c).sum(Kind::Float).backward();
                let (w, b) = (bn.inner.ws.as_ref().unwrap(), bn.inner.bs.as_ref().unwrap());
                [
                    y,
                    xg.grad(),
                    w.grad(),
                    b.grad(),
                    bn.running_mean().copy(),
                    bn.running_var().copy(),
                ]
                .iter()
                .map(values)
                .collect::<Vec<_>>()
            };
            let what = format!("{n}/{splits}, channels-last {channels_last}");
            assert_close(&pass(true), &pass(false), 2e-5, &what);
        }
    }

    /// The fused split kernel gives the bits of the fused kernel run on each sub-batch where it
    /// lies (a fresh layer each, from the same running statistics), in float and bfloat16
    /// (ReLU's mask words where the CPU rounds to bfloat16 itself), NCHW and channels-last,
    /// also when the batch does not divide: outputs, input gradients, the parameters'
    /// gradients added from the last sub-batch's, the running statistics the mean.
    #[test]
    fn the_fused_split_kernel_gives_each_sub_batch_s_fused_bits() {
        tch::manual_seed(9);
        for (n, splits, channels_last, kind) in [
            (8, 4, false, Kind::Float),
            (8, 2, true, Kind::Float),
            (7, 3, true, Kind::Float),
            (8, 4, true, Kind::BFloat16),
            (9, 4, false, Kind::BFloat16),
        ] {
            let x =
                (Tensor::randn([n, 3, 5, 5], (Kind::Float, Device::Cpu)) * 2.0 + 0.3).to_kind(kind);
            let x = if channels_last { crate::precision::to_channels_last(&x).unwrap() } else { x };
            let c = Tensor::randn([n, 3, 5, 5], (Kind::Float, Device::Cpu)).to_kind(kind);
            let what = format!("{n}/{splits}, channels-last {channels_last}, {kind:?}");
            let vs = nn::VarStore::new(Device::Cpu);
            let bn = layer(&vs);
            let xg = x.copy().set_requires_grad(true);
            let y = {
                let _split = split_batch_norm(splits);
                bn.forward_relu_t(&xg, true)
            };
            assert_eq!(crate::precision::is_channels_last(&y), channels_last, "{what}");
            (&y * &c).sum(Kind::Float).backward();
            let (w, b) = (bn.inner.ws.as_ref().unwrap(), bn.inner.bs.as_ref().unwrap());
            let got = [&y, &xg.grad(), &w.grad(), &b.grad(), bn.running_mean(), bn.running_var()]
                .map(values);
            // The reference: the unsplit fused kernel on each sub-batch, a fresh layer each.
            let xr = x.copy().set_requires_grad(true);
            let layers: Vec<_> = (0..splits).map(|_| nn::VarStore::new(Device::Cpu)).collect();
            let (mut ys, mut loss) = (Vec::new(), Tensor::zeros([], (Kind::Float, Device::Cpu)));
            let mut bns = Vec::new();
            for ((xk, ck), vs) in xr.chunk(splits, 0).iter().zip(c.chunk(splits, 0)).zip(&layers) {
                let bn = layer(vs);
                let yk = bn.forward_relu_t(xk, true);
                loss += (&yk * ck).sum(Kind::Float);
                ys.push(yk);
                bns.push(bn);
            }
            loss.backward();
            let grads =
                |f: fn(&BatchNorm) -> Tensor| bns.iter().rev().map(f).reduce(|a, g| a + g).unwrap();
            let stat = |f: fn(&BatchNorm) -> Tensor| {
                Tensor::stack(&bns.iter().map(f).collect::<Vec<_>>(), 0).mean_dim(
                    0,
                    false,
                    Kind::Float,
                )
            };
            let want = [
                &Tensor::cat(&ys, 0),
                &xr.grad(),
                &grads(|bn| bn.inner.ws.as_ref().unwrap().grad()),
                &grads(|bn| bn.inner.bs.as_ref().unwrap().grad()),
                &stat(|bn| bn.running_mean().copy()),
                &stat(|bn| bn.running_var().copy()),
            ]
            .map(values);
            let names = ["output", "input grad", "weight grad", "bias grad", "mean", "var"];
            for ((g, w), name) in got.iter().zip(&want).zip(names) {
                assert_eq!(g, w, "{what}: {name}");
            }
        }
        // The kernel refuses what it does not do, naming it.
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = layer(&vs);
        let x = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        for (residual, splits, want) in [
            (Some((&x, None)), 2, "no residual, one output"),
            (None, 5, "5 sub-batches of a batch of 4"),
            (None, 0, "0 sub-batches"),
        ] {
            let e = bn.f_fused_relu(&x, residual, false, splits).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let one = Tensor::randn([3, 3, 1, 1], (Kind::Float, Device::Cpu));
        let e = bn.f_fused_relu(&one, None, false, 2).unwrap_err();
        assert!(e.contains("more than 1 value per channel in each sub-batch"), "{e}");
    }

    #[test]
    fn without_a_job_it_is_tchs_batch_norm() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = batch_norm1d(vs.root() / "bn", 4);
        assert!(!bn.is_synchronised());
        let x = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let y = bn.forward_t(&x, true);
        let reference = x.batch_norm(
            None::<Tensor>,
            None::<Tensor>,
            None::<Tensor>,
            None::<Tensor>,
            true,
            0.1,
            1e-5,
            false,
        );
        assert!(y.allclose(&reference, 1e-5, 1e-6, false));
    }
}
