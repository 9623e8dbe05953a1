//! MoCo's method config (`method_config` of a run). Defaults: MoCo v2 with the CIFAR queue size
//! of the official CIFAR-10 demo (4,096) and the papers' momentum 0.999.
use selfsup_contrastive::head::HeadConfig;
use selfsup_data::Pipeline;
use serde::{Deserialize, Serialize};

/// Which MoCo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MocoVersion {
    /// MoCo v1: linear head to 128-d, τ = 0.07, MoCo v1 augmentation (no blur).
    V1,
    /// MoCo v2: MLP head, τ = 0.2, SimCLR-style augmentation with blur (at 64 px and above).
    #[default]
    V2,
}

/// The projection head on the pooled encoder features.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadChoice {
    /// The version's: v1 a linear layer to `dim`, v2 `Linear(C, C) → ReLU → Linear(C, dim)`.
    #[default]
    Default,
    /// One linear layer to `dim` (MoCo v1, the CIFAR-10 demo).
    Linear,
    /// An MLP (`{"mlp": {...}}`); its `out_dim` must equal `dim`.
    Mlp(HeadConfig),
}

/// MoCo settings. Every field has a default; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MocoConfig {
    /// `v1` or `v2` (default): selects the defaults of `temperature`, `head` and `view`.
    #[serde(default)]
    pub version: MocoVersion,
    /// Momentum m of the key network, `θ_k ← m θ_k + (1 − m) θ_q`. Default 0.999.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Number of keys K in the queue. Default 4,096 (CIFAR; 65,536 on ImageNet).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Feature dimension of the keys (output of the head). Default 128.
    #[serde(default = "default_dim")]
    pub dim: i64,
    /// Softmax temperature τ; `null` = 0.07 for v1, 0.2 for v2. Default null.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Projection head: `"default"` (the version's), `"linear"` or `{"mlp": {...}}`.
    /// Default `"default"`.
    #[serde(default)]
    pub head: HeadChoice,
    /// The symmetric loss of the official CIFAR-10 demo: `ctr(q1, k2) + ctr(q2, k1)`, both key
    /// sets enqueued. Default false.
    #[serde(default)]
    pub symmetric: bool,
    /// Shuffling BN on one device: the batch is split into this many sub-batches that go
    /// through the networks separately (each normalised with its own BN statistics, the running
    /// statistics updated once with their mean: the demo's `SplitBatchNorm`), and the key batch
    /// is shuffled before splitting and unshuffled after.
    /// Fewer splits are used when a batch has under 2 images per split. 1 disables it.
    /// Default 8.
    #[serde(default = "default_bn_splits")]
    pub bn_splits: usize,
    /// Augmentation of both views; `null` = the version's (v1: MoCo v1's, v2: SimCLR's).
    /// Default null.
    #[serde(default)]
    pub view: Option<Pipeline>,
}

fn default_momentum() -> f64 {
    0.999
}
fn default_queue_size() -> usize {
    4096
}
fn default_dim() -> i64 {
    128
}
fn default_bn_splits() -> usize {
    8
}

impl Default for MocoConfig {
    fn default() -> Self {
        MocoConfig {
            version: MocoVersion::default(),
            momentum: default_momentum(),
            queue_size: default_queue_size(),
            dim: default_dim(),
            temperature: None,
            head: HeadChoice::Default,
            symmetric: false,
            bn_splits: default_bn_splits(),
            view: None,
        }
    }
}

impl MocoConfig {
    /// The temperature in effect.
    pub fn tau(&self) -> f64 {
        self.temperature.unwrap_or(match self.version {
            MocoVersion::V1 => 0.07,
            MocoVersion::V2 => 0.2,
        })
    }

    /// The MLP head in effect (`None`: a linear layer to `dim`).
    pub fn mlp_head(&self) -> Option<HeadConfig> {
        match (&self.head, self.version) {
            (HeadChoice::Mlp(h), _) => Some(h.clone()),
            (HeadChoice::Linear, _) | (HeadChoice::Default, MocoVersion::V1) => None,
            (HeadChoice::Default, MocoVersion::V2) => {
                Some(HeadConfig { out_dim: self.dim, ..HeadConfig::mocov2() })
            }
        }
    }

    /// The official CIFAR-10 demo's settings (`moco_cifar10_demo.ipynb`): K = 4,096, m = 0.99,
    /// τ = 0.1, symmetric loss, 8 BN splits, ResNet's single fc layer to 128-d as the head and
    /// SimCLR-style augmentation without blur (v2's view at 32 px).
    pub fn cifar_demo() -> Self {
        MocoConfig {
            version: MocoVersion::V2,
            momentum: 0.99,
            queue_size: 4096,
            dim: 128,
            temperature: Some(0.1),
            head: HeadChoice::Linear,
            symmetric: true,
            bn_splits: 8,
            view: None,
        }
    }
}
