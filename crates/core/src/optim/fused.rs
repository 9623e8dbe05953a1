//! Fused optimizer steps through the C++ shim (`csrc/fused_optim.cpp`): libtorch's
//! `_fused_sgd_` and `_fused_adamw_`, the kernels of `torch.optim.SGD(fused=True)` and
//! `torch.optim.AdamW(fused=True)`. One call updates a list of parameters (on the CPU a
//! vectorised loop per tensor without a dispatch per arithmetic op; on CUDA a multi-tensor
//! kernel), with the arithmetic of the single-tensor updates in [`super::Sgd`] and
//! [`super::AdamW`].
//!
//! A kernel walks each parameter, its gradient and its state as flat memory, so a tensor joins a
//! [`Group`] only when it is dense (one run of memory without gaps, in any order of dimensions)
//! and all of them share the parameter's strides (autograd's gradient-layout contract gives a
//! gradient the parameter's layout, and state made by `zeros_like` has it), the group's device
//! and floating dtype; anything else takes the single-tensor path.
use std::os::raw::{c_char, c_int, c_void};

use tch::{Device, Kind, Tensor};

use crate::{CoreError, Result};

/// A tensor handle as the shim takes it: tch's `C_tensor`, an `at::Tensor`.
type Handle = *const c_void;

extern "C" {
    fn selfsup_drop_grads(
        params: *const Handle,
        n: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_fused_sgd(
        params: *const Handle,
        grads: *const Handle,
        bufs: *const Handle,
        n: usize,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        nesterov: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_fused_adamw(
        params: *const Handle,
        grads: *const Handle,
        exp_avgs: *const Handle,
        exp_avg_sqs: *const Handle,
        steps: *const Handle,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Parameters updated by one fused call: same device, dtype and (for SGD) weight decay. Holds
/// shallow clones; column `j` of `state` is the `j`-th state slot of every member.
#[derive(Debug)]
pub(crate) struct Group {
    device: Device,
    kind: Kind,
    /// The group's weight decay (SGD groups split on it; AdamW has one).
    pub weight_decay: f64,
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    state: Vec<Vec<Tensor>>,
}

impl Group {
    fn new(p: &Tensor, weight_decay: f64, slots: usize) -> Self {
        Group {
            device: p.device(),
            kind: p.kind(),
            weight_decay,
            params: Vec::new(),
            grads: Vec::new(),
            state: (0..slots).map(|_| Vec::new()).collect(),
        }
    }
}

/// Sorts parameters into fused groups and leaves the rest to the caller.
#[derive(Debug, Default)]
pub(crate) struct Groups(pub Vec<Group>);

impl Groups {
    /// Adds parameter `p` with gradient `grad` and the state tensors `state` (those whose
    /// layout must match: moments, momentum buffers) to the group of its device, dtype and
    /// `weight_decay`, and returns the group's index; `None` (nothing added) when the kernels
    /// cannot take it: a non-floating dtype or a gradient or state tensor with other strides,
    /// dtype or device.
    pub fn push(
        &mut self,
        p: &Tensor,
        grad: &Tensor,
        state: &[&Tensor],
        weight_decay: f64,
    ) -> Option<usize> {
        if !fusable(p, grad, state) {
            return None;
        }
        let (device, kind) = (p.device(), p.kind());
        let at = self
            .0
            .iter()
            .position(|g| g.device == device && g.kind == kind && g.weight_decay == weight_decay);
        let i = at.unwrap_or_else(|| {
            self.0.push(Group::new(p, weight_decay, state.len()));
            self.0.len() - 1
        });
        let g = &mut self.0[i];
        g.params.push(p.shallow_clone());
        g.grads.push(grad.shallow_clone());
        for (column, t) in g.state.iter_mut().zip(state) {
            column.push(t.shallow_clone());
        }
        Some(i)
    }
}

fn fusable(p: &Tensor, grad: &Tensor, state: &[&Tensor]) -> bool {
    let floating = matches!(p.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
    let strides = p.stride();
    floating
        && p.numel() > 0
        && dense(&p.size(), &strides)
        && std::iter::once(grad)
            .chain(state.iter().copied())
            .all(|t| t.kind() == p.kind() && t.device() == p.device() && t.stride() == strides)
}

/// Whether a tensor of `size` and `stride` covers one run of `numel` values, each once: its
/// dimensions of more than one value, ordered by stride, have the strides of a contiguous
/// tensor (NCHW, channels-last or any other order).
fn dense(size: &[i64], stride: &[i64]) -> bool {
    let mut dims: Vec<(i64, i64)> =
        stride.iter().zip(size).filter(|(_, &n)| n != 1).map(|(&s, &n)| (s, n)).collect();
    dims.sort_unstable();
    let mut run = 1;
    dims.into_iter().all(|(s, n)| {
        let ok = s == run;
        run *= n;
        ok
    })
}

fn ptrs(ts: &[Tensor]) -> Vec<Handle> {
    ts.iter().map(|t| t.as_ptr().cast::<c_void>()).collect()
}

/// The shim's result: `err` holds libtorch's message (first line: the rest is its C++ stack
/// trace), decoded as the other shims' are ([`selfsup_dist::shim_message`]).
fn check(rc: c_int, err: &[u8], what: &str) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    Err(CoreError::Optimizer(format!("{what}: {}", selfsup_dist::shim_message(err))))
}

/// Drops the gradients of `params` (PyTorch's `zero_grad(set_to_none=True)`): the next
/// backward pass gives each parameter its gradient as computed, rather than adding it into a
/// zeroed buffer (a fill and an add a parameter, each a kernel on CUDA); a parameter the pass
/// does not reach is left without a gradient, and the optimizers skip it.
pub fn drop_grads<'a>(params: impl IntoIterator<Item = &'a Tensor>) -> Result<()> {
    let handles: Vec<Handle> = params.into_iter().map(|t| t.as_ptr().cast::<c_void>()).collect();
    let mut err = [0u8; 512];
    // SAFETY: `handles` holds live tensors borrowed for the call; the shim only resets their
    // gradients.
    let rc = unsafe {
        selfsup_drop_grads(handles.as_ptr(), handles.len(), err.as_mut_ptr().cast(), err.len())
    };
    check(rc, &err, "dropping gradients")
}

/// `torch.optim.SGD(fused=True)`'s step over `g` (state column 0 = momentum buffers, absent
/// when `momentum` is 0).
pub(crate) fn sgd(g: &Group, momentum: f64, nesterov: bool, lr: f64) -> Result<()> {
    let (params, grads) = (ptrs(&g.params), ptrs(&g.grads));
    let bufs = if momentum != 0.0 { ptrs(&g.state[0]) } else { Vec::new() };
    let mut err = [0u8; 512];
    // SAFETY: the arrays hold `n` live tensors each (shallow clones held by `g`); the shim
    // copies the handles and returns before they are dropped.
    let rc = unsafe {
        selfsup_fused_sgd(
            params.as_ptr(),
            grads.as_ptr(),
            if bufs.is_empty() { std::ptr::null() } else { bufs.as_ptr() },
            params.len(),
            g.weight_decay,
            momentum,
            lr,
            c_int::from(nesterov),
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    check(rc, &err, "fused SGD step")
}

/// `torch.optim.AdamW(fused=True)`'s step over `g` (state columns: first moments, second
/// moments, step counts); `steps` are the step-count scalars, on the CPU for CPU parameters.
pub(crate) fn adamw(
    g: &Group,
    steps: &[Tensor],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
) -> Result<()> {
    let (params, grads) = (ptrs(&g.params), ptrs(&g.grads));
    let (m, v, s) = (ptrs(&g.state[0]), ptrs(&g.state[1]), ptrs(steps));
    let mut err = [0u8; 512];
    // SAFETY: as in `sgd`; `steps` has one live tensor per parameter.
    let rc = unsafe {
        selfsup_fused_adamw(
            params.as_ptr(),
            grads.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            params.len(),
            lr,
            beta1,
            beta2,
            g.weight_decay,
            eps,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    check(rc, &err, "fused AdamW step")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_take_only_matching_layouts() {
        let p = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
        let same = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
        let transposed = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)).tr();
        let double = Tensor::zeros([3, 4], (Kind::Double, Device::Cpu));
        let int = Tensor::zeros([3, 4], (Kind::Int64, Device::Cpu));
        assert!(fusable(&p, &same, &[&same]));
        assert!(!fusable(&p, &transposed, &[]), "gradient with other strides");
        assert!(!fusable(&p, &same, &[&transposed]), "state with other strides");
        assert!(!fusable(&p, &double, &[]), "gradient of another dtype");
        assert!(!fusable(&int, &int, &[]), "integer parameter");
        let wide = Tensor::zeros([3, 8], (Kind::Float, Device::Cpu));
        let gappy = wide.slice(1, 0, 8, 2);
        assert!(!fusable(&gappy, &wide.slice(1, 1, 8, 2), &[]), "every other column: gaps");
        let cl = Tensor::zeros([2, 3, 4, 5], (Kind::Float, Device::Cpu))
            .permute([0, 2, 3, 1])
            .contiguous()
            .permute([0, 3, 1, 2]);
        assert!(fusable(&cl, &cl.zeros_like(), &[&cl.zeros_like()]), "channels-last");
        assert!(dense(&[1, 4], &[1, 1]) && dense(&[4, 1], &[1, 7]), "size-1 dimensions");
        assert!(!dense(&[2, 2], &[1, 1]), "overlapping");
        let mut g = Groups::default();
        assert_eq!(g.push(&p, &same, &[], 0.1), Some(0));
        assert_eq!(g.push(&p, &same, &[], 0.0), Some(1), "another weight decay");
        assert_eq!(g.push(&double, &double, &[], 0.1), Some(2), "another dtype");
        assert_eq!(g.push(&p, &same, &[], 0.1), Some(0));
        assert_eq!(g.push(&p, &transposed, &[], 0.1), None);
        assert_eq!(g.0[0].params.len(), 2);
    }

    /// Channels-last weights (strides other than contiguous, shared by gradient and state,
    /// which the shim hands to the kernels flat): the fused SGD and AdamW steps give the
    /// single-tensor formulas' values.
    #[test]
    fn fused_steps_follow_the_formulas_on_channels_last_weights() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let cl = |t: Tensor| t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        let p0 = Tensor::randn([4, 3, 2, 5], opts);
        let grads: Vec<Tensor> = (0..3).map(|_| Tensor::randn([4, 3, 2, 5], opts)).collect();
        let _no_grad = tch::no_grad_guard();

        let (lr, wd, m) = (0.1, 0.01, 0.9);
        let p = cl(p0.copy());
        let buf = cl(p0.zeros_like());
        let (mut ep, mut ebuf) = (p0.copy(), p0.zeros_like());
        for g in &grads {
            let grad = cl(g.copy());
            let mut groups = Groups::default();
            assert_eq!(groups.push(&p, &grad, &[&buf], wd), Some(0));
            sgd(&groups.0[0], m, true, lr).unwrap();
            let d = g + &ep * wd;
            ebuf = &ebuf * m + &d;
            ep = &ep - (&d + &ebuf * m) * lr;
        }
        assert_ne!(p.stride(), ep.stride());
        let diff = (&p - &ep).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "SGD: max |diff| {diff:e}");

        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        let p = cl(p0.copy());
        let (ma, va) = (cl(p0.zeros_like()), cl(p0.zeros_like()));
        let steps = vec![Tensor::zeros([], opts)];
        let (mut ep, mut em, mut ev) = (p0.copy(), p0.zeros_like(), p0.zeros_like());
        for (t, g) in grads.iter().enumerate() {
            let grad = cl(g.copy());
            let mut groups = Groups::default();
            groups.push(&p, &grad, &[&ma, &va], wd);
            adamw(&groups.0[0], &steps, lr, b1, b2, eps).unwrap();
            let t = (t + 1) as f64;
            ep = &ep * (1.0 - lr * wd);
            em = &em * b1 + g * (1.0 - b1);
            ev = &ev * b2 + g * g * (1.0 - b2);
            let denom = ev.sqrt() / (1.0 - b2.powf(t)).sqrt() + eps;
            ep = &ep - &em / denom * (lr / (1.0 - b1.powf(t)));
        }
        assert_eq!(steps[0].double_value(&[]), 3.0, "the step count is advanced");
        let diff = (&p - &ep).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "AdamW: max |diff| {diff:e}");
    }

    #[test]
    fn a_kernel_error_is_an_error_naming_the_step() {
        let p = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let g = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let mut groups = Groups::default();
        groups.push(&p, &g, &[&g.zeros_like()], 0.0);
        // A group whose momentum-buffer column is short: libtorch refuses the lists.
        groups.0[0].state[0].clear();
        let err = sgd(&groups.0[0], 0.9, false, 0.1).unwrap_err().to_string();
        assert!(err.contains("fused SGD step"), "{err}");
    }
}
