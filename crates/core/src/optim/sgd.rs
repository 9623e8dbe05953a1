//! Stochastic gradient descent as `torch.optim.SGD` (single-tensor path, dampening 0):
//!
//! ```text
//! g = grad + wd * p                      (coupled weight decay)
//! buf = momentum * buf + g               (buf starts at 0, i.e. buf = g on the first step)
//! g = g + momentum * buf   (Nesterov)    or   g = buf
//! p = p - lr * g
//! ```
//!
//! The update runs as libtorch's fused kernel (`torch.optim.SGD(fused=True)`, see
//! [`super::fused`]) for every parameter it can take, as one call per device, dtype and weight
//! decay; the same arithmetic per element.
use tch::Tensor;

use super::{apply_update, fused, no_weight_decay, Optimizer, StateBuffers};
use crate::Result;

/// SGD with momentum, Nesterov and weight decay; state `sgd.momentum.<param>` when momentum is
/// not 0.
#[derive(Debug)]
pub struct Sgd {
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    exclude_bias_and_norm: bool,
    state: StateBuffers,
}

impl Sgd {
    /// SGD over `params` (see [`super::OptimizerConfig::Sgd`] for the settings, which are
    /// checked there).
    pub fn new(
        params: &[(String, Tensor)],
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
        exclude_bias_and_norm: bool,
    ) -> Result<Self> {
        let slots: &[&str] = if momentum != 0.0 { &["momentum"] } else { &[] };
        let state = StateBuffers::new("sgd", slots, params, |_, p| Ok(p.f_zeros_like()?))?;
        Ok(Sgd { momentum, nesterov, weight_decay, exclude_bias_and_norm, state })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        let mut groups = fused::Groups::default();
        for (name, p) in params {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let buffers = self.state.get_mut(name)?;
            let wd = if self.exclude_bias_and_norm && no_weight_decay(name, p) {
                0.0
            } else {
                self.weight_decay
            };
            let state: Vec<&Tensor> = buffers.iter().collect();
            if groups.push(p, &grad, &state, wd).is_some() {
                continue;
            }
            let mut d_p = if wd != 0.0 { grad.f_add(&p.f_mul_scalar(wd)?)? } else { grad };
            if let Some(buf) = buffers.first_mut() {
                let _ = buf.f_mul_scalar_(self.momentum)?;
                let _ = buf.f_add_(&d_p)?;
                d_p = if self.nesterov {
                    d_p.f_add(&buf.f_mul_scalar(self.momentum)?)?
                } else {
                    buf.shallow_clone()
                };
            }
            apply_update(p, &d_p, lr)?;
        }
        for g in &groups.0 {
            fused::sgd(g, self.momentum, self.nesterov, lr)?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.state.state()
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.state.load(state)
    }
}
