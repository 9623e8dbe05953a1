//! AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization") as
//! `torch.optim.AdamW` (single-tensor path, no AMSGrad):
//!
//! ```text
//! t += 1                                  (per parameter, as PyTorch's state["step"])
//! p = p * (1 - lr * wd)
//! m = lerp(m, g, 1 - beta1)
//! v = beta2 * v + (1 - beta2) * g * g
//! p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//!
//! The update runs as libtorch's fused kernel (`torch.optim.AdamW(fused=True)`, see
//! [`super::fused`]) for every parameter it can take, which computes the bias corrections from
//! the step counts itself; a parameter it cannot take gets the single-tensor update above with
//! the bias corrections computed in f64 from the step count, as PyTorch's does with Python
//! floats. The step counts live on the CPU for CPU parameters and on the parameter's device for
//! CUDA ones, as PyTorch's fused AdamW keeps them.
use tch::{Device, Kind, Tensor};

use super::{fused, Optimizer, StateBuffers};
use crate::{CoreError, Result};

/// AdamW; state `adamw.exp_avg.<param>`, `adamw.exp_avg_sq.<param>` and `adamw.step.<param>`
/// (a float32 scalar on the CPU).
#[derive(Debug)]
pub struct AdamW {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    state: StateBuffers,
}

impl AdamW {
    /// AdamW over `params` (see [`super::OptimizerConfig::Adamw`] for the settings, which are
    /// checked there).
    pub fn new(
        params: &[(String, Tensor)],
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let state =
            StateBuffers::new("adamw", &["exp_avg", "exp_avg_sq", "step"], params, |slot, p| {
                Ok(if slot == 2 {
                    let device = if p.device().is_cuda() { p.device() } else { Device::Cpu };
                    Tensor::f_zeros([], (Kind::Float, device))?
                } else {
                    p.f_zeros_like()?
                })
            })?;
        Ok(AdamW { beta1, beta2, eps, weight_decay, state })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        let mut groups = fused::Groups::default();
        let mut steps: Vec<Vec<Tensor>> = Vec::new();
        for (name, p) in params {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let [exp_avg, exp_avg_sq, step_t] = self.state.get_mut(name)? else {
                return Err(CoreError::Optimizer(format!("state of `{name}` is incomplete")));
            };
            let on_device = step_t.device() == p.device() || !p.device().is_cuda();
            let group = if on_device {
                groups.push(p, &grad, &[exp_avg, exp_avg_sq], self.weight_decay)
            } else {
                None
            };
            if let Some(i) = group {
                steps.resize_with(steps.len().max(i + 1), Vec::new);
                steps[i].push(step_t.shallow_clone());
                continue;
            }
            let _ = step_t.f_add_scalar_(1.0)?;
            let step = step_t.f_double_value(&[])?;
            if self.weight_decay != 0.0 {
                let _ = p.shallow_clone().f_mul_scalar_(1.0 - lr * self.weight_decay)?;
            }
            let _ = exp_avg.f_lerp_(&grad, 1.0 - self.beta1)?;
            let _ = exp_avg_sq.f_mul_scalar_(self.beta2)?;
            let _ = exp_avg_sq.f_addcmul_(&grad.f_mul_scalar(1.0 - self.beta2)?, &grad)?;
            let bias_correction1 = 1.0 - self.beta1.powf(step);
            let bias_correction2_sqrt = (1.0 - self.beta2.powf(step)).sqrt();
            let denom =
                exp_avg_sq.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?.f_add_scalar(self.eps)?;
            // Same operation order as PyTorch's `p.addcdiv_(m, denom, value=-step_size)`.
            let step_size = lr / bias_correction1;
            let _ = p.shallow_clone().f_addcdiv_(&exp_avg.f_mul_scalar(-step_size)?, &denom)?;
        }
        for (g, s) in groups.0.iter().zip(&steps) {
            fused::adamw(g, s, lr, self.beta1, self.beta2, self.eps)?;
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
