//! Instance discrimination's method config, with the paper's defaults (section 3 and the
//! official `main.py`: `--low-dim 128 --nce-k 4096 --nce-t 0.07 --nce-m 0.5`).
use selfsup_data::Pipeline;
use serde::{Deserialize, Serialize};

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Noise-contrastive estimation with `nce_k` noise images (paper eq. 5–7).
    #[default]
    Nce,
    /// The full non-parametric softmax over the whole bank (paper eq. 2).
    Softmax,
}

/// Instance discrimination settings. Every field has a default; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstDiscConfig {
    /// Feature (and memory bank) dimension. Default 128.
    #[serde(default = "default_dim")]
    pub dim: i64,
    /// Temperature τ. Default 0.07.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Momentum of the memory bank update, `m_i ← normalise(λ m_i + (1 − λ) v_i)`. Default 0.5.
    #[serde(default = "default_bank_momentum")]
    pub bank_momentum: f64,
    /// `nce` (default) or `softmax`.
    #[serde(default)]
    pub objective: Objective,
    /// Noise samples per image for NCE. Default 4,096.
    #[serde(default = "default_nce_k")]
    pub nce_k: i64,
    /// Batch norm (`BatchNorm1d(dim)`, variables `head_bn.*`) between the linear head and the
    /// L2 normalisation. Default false: the paper's head is the linear layer alone. The
    /// reproduction's cpu profile (NIN encoder) sets it; see the `reproduce` crate's
    /// `contrastive` module for what was measured with and without it.
    #[serde(default)]
    pub head_bn: bool,
    /// The augmentation; `null` = the official one (MoCo v1's: random resized crop 0.2–1,
    /// colour jitter 0.4, grayscale 0.2, flip). Default null.
    #[serde(default)]
    pub view: Option<Pipeline>,
}

fn default_dim() -> i64 {
    128
}
fn default_temperature() -> f64 {
    0.07
}
fn default_bank_momentum() -> f64 {
    0.5
}
fn default_nce_k() -> i64 {
    4096
}

impl Default for InstDiscConfig {
    fn default() -> Self {
        InstDiscConfig {
            dim: default_dim(),
            temperature: default_temperature(),
            bank_momentum: default_bank_momentum(),
            objective: Objective::default(),
            nce_k: default_nce_k(),
            head_bn: false,
            view: None,
        }
    }
}
