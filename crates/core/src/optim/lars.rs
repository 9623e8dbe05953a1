//! LARS (You et al. 2017, "Large Batch Training of Convolutional Networks") as solo-learn's
//! `solo/utils/lars.py` (copied there from PyTorch Lightning Bolts) with
//! `exclude_bias_n_norm_lars=True`, dampening 0, no Nesterov and `clip_lars_lr=False`:
//!
//! ```text
//! if p is not excluded and ||p|| > 0 and ||g|| > 0:
//!     g = eta * ||p|| / (||g|| + wd * ||p|| + eps) * (g + wd * p)      (eps = 1e-8)
//! buf = momentum * buf + g
//! p = p - lr * buf
//! ```
//!
//! Excluded parameters ([`super::no_weight_decay`]: biases and normalization weights) get
//! neither weight decay nor the trust ratio, as in SimCLR. The zero-norm test is done with
//! tensor ops (`where`), so a step never waits for the GPU.
use tch::Tensor;

use super::{apply_update, no_weight_decay, Optimizer, StateBuffers};
use crate::Result;

/// Denominator epsilon of the trust ratio (solo-learn's default).
const EPS: f64 = 1e-8;

/// LARS with momentum; state `lars.momentum.<param>` when momentum is not 0.
#[derive(Debug)]
pub struct Lars {
    momentum: f64,
    weight_decay: f64,
    eta: f64,
    state: StateBuffers,
}

impl Lars {
    /// LARS over `params` (see [`super::OptimizerConfig::Lars`] for the settings, which are
    /// checked there).
    pub fn new(
        params: &[(String, Tensor)],
        momentum: f64,
        weight_decay: f64,
        eta: f64,
    ) -> Result<Self> {
        let slots: &[&str] = if momentum != 0.0 { &["momentum"] } else { &[] };
        let state = StateBuffers::new("lars", slots, params, |_, p| Ok(p.f_zeros_like()?))?;
        Ok(Lars { momentum, weight_decay, eta, state })
    }

    /// The LARS-scaled, decayed gradient of a parameter that is not excluded.
    fn adapted(&self, p: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let p_norm = p.f_norm()?;
        let g_norm = grad.f_norm()?;
        let denom = g_norm.f_add(&p_norm.f_mul_scalar(self.weight_decay)?)?.f_add_scalar(EPS)?;
        let trust = p_norm.f_div(&denom)?.f_mul_scalar(self.eta)?;
        let scaled = grad.f_add(&p.f_mul_scalar(self.weight_decay)?)?.f_mul(&trust)?;
        let active = p_norm.f_gt(0.0)?.f_logical_and(&g_norm.f_gt(0.0)?)?;
        Ok(scaled.f_where_self(&active, grad)?)
    }
}

impl Optimizer for Lars {
    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        for (name, p) in params {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let mut d_p = if no_weight_decay(name, p) { grad } else { self.adapted(p, &grad)? };
            if let Some(buf) = self.state.get_mut(name)?.first_mut() {
                let _ = buf.f_mul_scalar_(self.momentum)?;
                let _ = buf.f_add_(&d_p)?;
                d_p = buf.shallow_clone();
            }
            apply_update(p, &d_p, lr)?;
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
