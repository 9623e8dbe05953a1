//! Optimizers implemented over tensors, so that their state (momentum buffers, Adam moments)
//! is plain named tensors that checkpoints save and restore exactly.
//!
//! - [`Sgd`]: `torch.optim.SGD` (momentum, dampening 0, Nesterov, coupled weight decay).
//! - [`Lars`]: LARS (You et al. 2017, "Large Batch Training of Convolutional Networks") as in
//!   solo-learn's `solo/utils/lars.py` (from PyTorch Lightning Bolts), the version SimCLR and
//!   BYOL reproductions use.
//! - [`AdamW`]: `torch.optim.AdamW` (Loshchilov & Hutter 2019).
//!
//! Parameters are passed as `(name, tensor)` pairs in a fixed order (sorted by name); gradients
//! are read from `tensor.grad()`, and parameters whose gradient is undefined are skipped (their
//! state is left alone), as PyTorch does. State buffers are created when the optimizer is built
//! (zeros, which gives exactly PyTorch's lazily created state on the first step) and named
//! `<optimizer>.<buffer>.<parameter>`, e.g. `sgd.momentum.encoder.conv1.weight`. Weight decay is
//! skipped for parameters that [`no_weight_decay`] selects when the config asks for it (biases
//! and normalization weights, as LARS and most SSL recipes do).
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::{CoreError, Result};

mod adamw;
mod fused;
mod lars;
mod sgd;
#[cfg(test)]
mod tests;

pub use adamw::AdamW;
pub use fused::drop_grads;
pub use lars::Lars;
pub use sgd::Sgd;

/// Optimizer settings as they appear in run configs (`{"kind": "sgd", "lr": 0.1, ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// SGD with momentum, Nesterov and weight decay, as `torch.optim.SGD`.
    Sgd {
        /// Base learning rate (scaled by the schedule).
        lr: f64,
        /// Momentum (0 = none). Default 0.9.
        #[serde(default = "default_momentum")]
        momentum: f64,
        /// Nesterov momentum. Default false.
        #[serde(default)]
        nesterov: bool,
        /// L2 weight decay added to the gradient. Default 0.
        #[serde(default)]
        weight_decay: f64,
        /// Skip weight decay for biases and normalization parameters. Default false.
        #[serde(default)]
        exclude_bias_and_norm: bool,
    },
    /// LARS (You et al. 2017) as in SimCLR: SGD with momentum whose per-layer update is scaled
    /// by the trust ratio `eta * ||w|| / ||g + wd * w||`; biases and normalization parameters
    /// are excluded from decay and adaptation.
    Lars {
        /// Base learning rate.
        lr: f64,
        /// Momentum. Default 0.9.
        #[serde(default = "default_momentum")]
        momentum: f64,
        /// Weight decay. Default 1e-6.
        #[serde(default = "default_lars_wd")]
        weight_decay: f64,
        /// Trust coefficient. Default 0.001.
        #[serde(default = "default_eta")]
        eta: f64,
    },
    /// AdamW (Loshchilov & Hutter 2019), as `torch.optim.AdamW`.
    Adamw {
        /// Base learning rate.
        lr: f64,
        /// First-moment decay. Default 0.9.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay. Default 0.999.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Denominator epsilon. Default 1e-8.
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay. Default 0.01.
        #[serde(default = "default_adamw_wd")]
        weight_decay: f64,
    },
}

fn default_momentum() -> f64 {
    0.9
}
fn default_lars_wd() -> f64 {
    1e-6
}
fn default_eta() -> f64 {
    0.001
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_adamw_wd() -> f64 {
    0.01
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Lars { lr, .. }
            | OptimizerConfig::Adamw { lr, .. } => *lr,
        }
    }

    /// Checks the settings and builds the optimizer over `params` (sorted by name), with zeroed
    /// state for each. An error names the setting out of range or a repeated parameter name.
    pub fn build(&self, params: &[(String, Tensor)]) -> Result<Box<dyn Optimizer>> {
        let non_negative = |field: &str, v: f64| {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(CoreError::Config(format!("optimizer.{field} = {v} must be finite and >= 0")))
            }
        };
        let below_one = |field: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(CoreError::Config(format!("optimizer.{field} = {v} must be in [0, 1)")))
            }
        };
        non_negative("lr", self.lr())?;
        Ok(match *self {
            OptimizerConfig::Sgd {
                momentum,
                nesterov,
                weight_decay,
                exclude_bias_and_norm,
                ..
            } => {
                non_negative("momentum", momentum)?;
                non_negative("weight_decay", weight_decay)?;
                if nesterov && momentum == 0.0 {
                    return Err(CoreError::Config(
                        "optimizer.nesterov = true needs optimizer.momentum > 0".to_owned(),
                    ));
                }
                Box::new(Sgd::new(params, momentum, nesterov, weight_decay, exclude_bias_and_norm)?)
            }
            OptimizerConfig::Lars { momentum, weight_decay, eta, .. } => {
                non_negative("momentum", momentum)?;
                non_negative("weight_decay", weight_decay)?;
                non_negative("eta", eta)?;
                Box::new(Lars::new(params, momentum, weight_decay, eta)?)
            }
            OptimizerConfig::Adamw { beta1, beta2, eps, weight_decay, .. } => {
                below_one("beta1", beta1)?;
                below_one("beta2", beta2)?;
                non_negative("eps", eps)?;
                non_negative("weight_decay", weight_decay)?;
                Box::new(AdamW::new(params, beta1, beta2, eps, weight_decay)?)
            }
        })
    }
}

/// Whether a parameter is a bias or a normalization weight (by its var-store name): 1-d
/// tensors, or names ending in `.bias`, or containing `bn`/`norm`.
pub fn no_weight_decay(name: &str, t: &Tensor) -> bool {
    t.dim() <= 1 || name.ends_with(".bias") || name.contains("bn") || name.contains("norm")
}

/// An optimizer over named parameters.
pub trait Optimizer: std::fmt::Debug {
    /// One update of every parameter that has a gradient, at learning rate `lr` (the schedule's
    /// value for this step). Parameters without a gradient are left alone; a parameter the
    /// optimizer was not built with is an error.
    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<()>;

    /// The state as named tensors sorted by name (e.g. `sgd.momentum.<param name>`), for
    /// checkpoints. The tensors share memory with the optimizer's buffers and keep the
    /// parameters' layout (they are not contiguous after [`crate::precision::set_channels_last`]).
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores [`Optimizer::state`] by copying into the buffers (so device and layout stay the
    /// parameters'). Every buffer must be present with its shape, and no other entry: an error
    /// names the first missing, mis-shaped or unexpected entry, and nothing is changed then.
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()>;
}

/// Per-parameter state tensors named `<prefix>.<slot>.<parameter>`.
#[derive(Debug)]
struct StateBuffers {
    prefix: &'static str,
    slots: &'static [&'static str],
    /// Parameter name to one tensor per slot.
    buffers: BTreeMap<String, Vec<Tensor>>,
}

impl StateBuffers {
    /// State for `params`, each slot initialised by `init(slot index, parameter)`.
    fn new(
        prefix: &'static str,
        slots: &'static [&'static str],
        params: &[(String, Tensor)],
        init: impl Fn(usize, &Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let _no_grad = tch::no_grad_guard();
        let mut buffers = BTreeMap::new();
        for (name, p) in params {
            let slot_tensors = (0..slots.len()).map(|i| init(i, p)).collect::<Result<Vec<_>>>()?;
            if buffers.insert(name.clone(), slot_tensors).is_some() {
                return Err(CoreError::Optimizer(format!("parameter `{name}` is given twice")));
            }
        }
        Ok(StateBuffers { prefix, slots, buffers })
    }

    /// The buffers of parameter `name`, one per slot.
    fn get_mut(&mut self, name: &str) -> Result<&mut [Tensor]> {
        self.buffers.get_mut(name).map(Vec::as_mut_slice).ok_or_else(|| {
            CoreError::Optimizer(format!(
                "parameter `{name}` was not given when the {} optimizer was built",
                self.prefix
            ))
        })
    }

    fn key(&self, slot: &str, param: &str) -> String {
        format!("{}.{slot}.{param}", self.prefix)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .buffers
            .iter()
            .flat_map(|(param, tensors)| {
                self.slots
                    .iter()
                    .zip(tensors)
                    .map(|(slot, t)| (self.key(slot, param), t.shallow_clone()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn load(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let given: HashMap<&str, &Tensor> = state.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let mut expected = HashSet::new();
        for (param, tensors) in &self.buffers {
            for (slot, t) in self.slots.iter().zip(tensors) {
                let key = self.key(slot, param);
                let Some(src) = given.get(key.as_str()) else {
                    return Err(CoreError::Optimizer(format!("state entry `{key}` is missing")));
                };
                if src.size() != t.size() {
                    return Err(CoreError::Optimizer(format!(
                        "state entry `{key}` has shape {:?}, expected {:?}",
                        src.size(),
                        t.size()
                    )));
                }
                expected.insert(key);
            }
        }
        if let Some((key, _)) = state.iter().find(|(k, _)| !expected.contains(k.as_str())) {
            return Err(CoreError::Optimizer(format!(
                "state entry `{key}` is not a buffer of this {} optimizer",
                self.prefix
            )));
        }
        let _no_grad = tch::no_grad_guard();
        for (param, tensors) in &mut self.buffers {
            for (slot, t) in self.slots.iter().zip(tensors.iter_mut()) {
                let key = format!("{}.{slot}.{param}", self.prefix);
                t.f_copy_(given[key.as_str()])?;
            }
        }
        Ok(())
    }
}

/// `param += -lr * update`, in place.
fn apply_update(param: &Tensor, update: &Tensor, lr: f64) -> Result<()> {
    let _ = param.shallow_clone().f_add_(&update.f_mul_scalar(-lr)?)?;
    Ok(())
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)` clamped to 1, applied
/// to every gradient) and returns the total norm before clipping. Parameters without a gradient
/// are ignored; with none at all the norm is 0. The norm stays on the device, `()` (reading it
/// back would make the host wait for the device at every step).
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Result<Tensor> {
    let _no_grad = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).filter(Tensor::defined).collect();
    let Some(first) = grads.first() else {
        return Ok(Tensor::from(0.0f32));
    };
    let device = first.device();
    let norms =
        grads.iter().map(|g| Ok(g.f_norm()?.f_to_device(device)?)).collect::<Result<Vec<_>>>()?;
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    let coef =
        total.f_add_scalar(1e-6)?.f_reciprocal()?.f_mul_scalar(max_norm)?.f_clamp_max(1.0)?;
    for mut g in grads {
        let _ = g.f_mul_(&coef)?;
    }
    Ok(total)
}
