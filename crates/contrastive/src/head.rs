//! The projection MLP of SimCLR and MoCo v2: `Linear → [BN] → ReLU → Linear → [BN]`.
//!
//! SimCLR (Chen et al. 2020; official TF code `proj_head_mode=nonlinear`) puts batch norm after
//! both linear layers and drops their biases; MoCo v2 (Chen et al. 2020b) uses
//! `Linear → ReLU → Linear` without BN; solo-learn's MoCo v2+ adds BN after the hidden layer.
//! The head sits on the pooled encoder features and is thrown away after training.
use selfsup_core::encoders::{batch_norm1d, linear, BatchNorm, Linear, LinearBias};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Tensor};

/// Projection head settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Hidden width; `null` means the encoder's output width (SimCLR, MoCo v2). Default null.
    #[serde(default)]
    pub hidden_dim: Option<i64>,
    /// Output width. Default 128.
    #[serde(default = "default_out_dim")]
    pub out_dim: i64,
    /// Batch norm after the hidden linear layer. Default true.
    #[serde(default = "yes")]
    pub bn_hidden: bool,
    /// Batch norm after the output linear layer. Default true.
    #[serde(default = "yes")]
    pub bn_out: bool,
}

fn default_out_dim() -> i64 {
    128
}
fn yes() -> bool {
    true
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig { hidden_dim: None, out_dim: 128, bn_hidden: true, bn_out: true }
    }
}

impl HeadConfig {
    /// MoCo v2's head: `Linear(C, C) → ReLU → Linear(C, 128)`, no batch norm.
    pub fn mocov2() -> Self {
        HeadConfig { hidden_dim: None, out_dim: 128, bn_hidden: false, bn_out: false }
    }
}

/// The projection MLP.
#[derive(Debug)]
pub struct ProjectionHead {
    fc1: Linear,
    bn1: Option<BatchNorm>,
    fc2: Linear,
    bn2: Option<BatchNorm>,
}

impl ProjectionHead {
    /// Builds the head on `p` (variables `fc1`, `bn1`, `fc2`, `bn2`) for `in_dim` input
    /// features. Linear layers followed by batch norm have no bias (it would be cancelled).
    /// Initialisation is PyTorch's (`nn.Linear`: weights and biases uniform in `±1/√fan_in`;
    /// `nn.BatchNorm1d`: weight 1, bias 0), the reference of every recipe compared here.
    pub fn new(p: &nn::Path, in_dim: i64, cfg: &HeadConfig) -> Self {
        let hidden = cfg.hidden_dim.unwrap_or(in_dim);
        let bias = |bn: bool| if bn { LinearBias::None } else { LinearBias::Default };
        ProjectionHead {
            fc1: linear(p / "fc1", in_dim, hidden, bias(cfg.bn_hidden)),
            bn1: cfg.bn_hidden.then(|| batch_norm1d(p / "bn1", hidden)),
            fc2: linear(p / "fc2", hidden, cfg.out_dim, bias(cfg.bn_out)),
            bn2: cfg.bn_out.then(|| batch_norm1d(p / "bn2", cfg.out_dim)),
        }
    }
}

impl ModuleT for ProjectionHead {
    /// # Shapes
    /// `(N, in_dim)` → `(N, out_dim)`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = xs.apply(&self.fc1);
        let h = match &self.bn1 {
            Some(bn) => bn.forward_relu_t(&h, train),
            None => h.relu(),
        };
        let mut z = h.apply(&self.fc2);
        if let Some(bn) = &self.bn2 {
            z = z.apply_t(bn, train);
        }
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_variables() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let head = ProjectionHead::new(&(vs.root() / "head"), 16, &HeadConfig::default());
        let x = Tensor::randn([4, 16], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(head.forward_t(&x, true).size(), [4, 128]);
        let names = vs.variables();
        assert!(names.contains_key("head.fc1.weight"));
        assert!(!names.contains_key("head.fc1.bias"));
        assert!(names.contains_key("head.bn2.running_mean"));

        let vs2 = nn::VarStore::new(tch::Device::Cpu);
        let cfg = HeadConfig { hidden_dim: Some(8), ..HeadConfig::mocov2() };
        let head = ProjectionHead::new(&vs2.root(), 16, &cfg);
        assert_eq!(head.forward_t(&x, false).size(), [4, 128]);
        assert_eq!(vs2.variables()["fc1.weight"].size(), [8, 16]);
        assert!(vs2.variables().contains_key("fc2.bias"));
    }

    #[test]
    fn pytorch_initialisation() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _head = ProjectionHead::new(&vs.root(), 64, &HeadConfig::default());
        let v = vs.variables();
        // nn.Linear: |w| <= 1/sqrt(fan_in) (tch's default bound is 2.45x that).
        let max = v["fc1.weight"].abs().max().double_value(&[]);
        assert!(max <= 1.0 / 8.0 && max > 0.9 / 8.0, "{max}");
        // nn.BatchNorm1d: weight 1, bias 0 (tch's default draws the weight from U(0, 1)).
        for bn in ["bn1", "bn2"] {
            let w = &v[&format!("{bn}.weight")];
            assert!(w.eq(1.0).all().int64_value(&[]) == 1, "{bn}.weight");
            let b = &v[&format!("{bn}.bias")];
            assert!(b.eq(0.0).all().int64_value(&[]) == 1, "{bn}.bias");
        }
    }
}
