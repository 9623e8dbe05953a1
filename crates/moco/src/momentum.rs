//! The key network of MoCo: a copy of the query network (encoder and head) in its own frozen
//! [`nn::VarStore`], owned by the method, never touched by gradients or the optimizer, and
//! updated after each optimizer step by `θ_k ← m θ_k + (1 − m) θ_q` over the parameters
//! (official `_momentum_update_key_encoder`; buffers such as BN running statistics are the key
//! network's own, as there).
//!
//! The pairing of key and query variables is by name: the key network is built on
//! `key_vs.root()` with the same sub-paths (`encoder`, `head`) as the query network on the
//! method's root, and each key variable `a.b.c` is paired with `root / a / b` → `c`.
use selfsup_contrastive::ContrastiveError;
use tch::{nn, Device, Kind, Tensor};

pub use selfsup_core::encoders::var_at;

/// A momentum copy of a query network.
#[derive(Debug)]
pub struct MomentumEncoder {
    vs: nn::VarStore,
    /// (name, key tensor, query tensor) for every trainable parameter of the query network.
    params: Vec<(String, Tensor, Tensor)>,
    momentum: f64,
}

impl MomentumEncoder {
    /// Wraps `vs` (the key network, already built with the query network's structure) and
    /// pairs it with the query variables under `query_root`; copies every query variable into
    /// the key network (official: `param_k.data.copy_(param_q.data)`) and freezes it.
    pub fn new(
        mut vs: nn::VarStore,
        query_root: &nn::Path,
        momentum: f64,
    ) -> Result<Self, ContrastiveError> {
        if !(0.0..=1.0).contains(&momentum) {
            return Err(ContrastiveError::Config(format!(
                "momentum must be in [0, 1], got {momentum}"
            )));
        }
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut params = Vec::new();
        for (name, k) in vars {
            let q = var_at(query_root, &name).ok_or_else(|| {
                ContrastiveError::State(format!("query network has no variable `{name}`"))
            })?;
            if q.size() != k.size() {
                return Err(ContrastiveError::State(format!(
                    "`{name}` is {:?} in the query network and {:?} in the key network",
                    q.size(),
                    k.size()
                )));
            }
            let mut k_data = k.shallow_clone();
            tch::no_grad(|| k_data.copy_(&q));
            if k.requires_grad() {
                params.push((name, k, q));
            }
        }
        vs.freeze();
        Ok(MomentumEncoder { vs, params, momentum })
    }

    /// The root of the key network's store (build/forward helpers take paths under it).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The momentum m.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// Names of the parameters that follow the query network.
    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|(n, _, _)| n.as_str()).collect()
    }

    /// `θ_k ← m θ_k + (1 − m) θ_q` for every parameter, in place and without autograd.
    pub fn update(&mut self) {
        let m = self.momentum;
        tch::no_grad(|| {
            for (_, k, q) in &mut self.params {
                let q = q.to_kind(k.kind());
                let _ = k.g_mul_scalar_(m);
                let _ = k.g_add_(&(q * (1.0 - m)));
            }
        });
    }

    /// Every key-network variable as `key.<name>`, copied, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().map(|(n, t)| (format!("key.{n}"), t.copy())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Restores [`MomentumEncoder::state`]; every key variable must be present with its shape.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<(), ContrastiveError> {
        let device: Device = self.vs.device();
        for (name, mut var) in self.vs.variables() {
            let key = format!("key.{name}");
            let src = tensors
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, t)| t)
                .ok_or_else(|| ContrastiveError::State(format!("`{key}` missing")))?;
            if src.size() != var.size() {
                return Err(ContrastiveError::State(format!(
                    "`{key}` has shape {:?}, expected {:?}",
                    src.size(),
                    var.size()
                )));
            }
            let kind: Kind = var.kind();
            tch::no_grad(|| var.copy_(&src.to_kind(kind).to_device(device)));
        }
        Ok(())
    }
}
