//! Encoders with named feature taps.
//!
//! Every encoder is a [`tch::nn::ModuleT`] whose `forward_t` returns its last feature map
//! `(N, C, H, W)`, and whose [`Encoder::features_t`] returns the output of every named tap in
//! forward order: `block1..blockK` for the RotNet NIN and the ResNets, `conv1..conv5` for
//! AlexNet. Pooled features for probes are `forward_t(..).mean_dim([2, 3])`, shape
//! `(N, out_channels)`.
//!
//! | config `kind` | module | follows |
//! |---|---|---|
//! | `tiny` | [`tiny`] | a two-stage conv net for tests |
//! | `nin` | [`nin`] | `NetworkInNetwork` of gidariss/FeatureLearningRotNet (RotNet) |
//! | `alexnet` | [`alexnet`] | Caffe AlexNet of the classic pretext tasks, with BN |
//! | `resnet18`, `resnet50` | [`resnet`] | torchvision `resnet18` / `resnet50` (names included) |
use crate::{CoreError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

pub mod alexnet;
pub mod batch_norm;
pub mod conv;
pub mod linear;
pub mod nin;
pub mod resnet;
pub mod tiny;

pub use alexnet::{AlexNet, AlexnetVariant};
pub use batch_norm::{
    batch_norm1d, batch_norm2d, pytorch_bn, split_batch_norm, sync_batch_norm, BatchNorm,
    SplitBatchNormScope, SyncBatchNormScope,
};
pub use conv::Conv2d;
pub use linear::{affine, batched_product, linear, product, Linear, LinearBias};
pub use nin::{BasicBlock, Nin};
pub use resnet::{ResNet, ResnetStem};

/// An image encoder with named feature taps.
pub trait Encoder: nn::ModuleT + std::fmt::Debug {
    /// Tap names in forward order.
    fn tap_names(&self) -> Vec<String>;

    /// Outputs of every tap in forward order, each `(N, C_tap, H_tap, W_tap)`.
    /// The last entry equals `forward_t(xs, train)`.
    fn features_t(&self, xs: &Tensor, train: bool) -> Vec<(String, Tensor)>;

    /// Outputs of the taps up to and including `tap` (running only the layers needed).
    /// Returns all taps when `tap` is not a tap name.
    fn features_upto_t(&self, xs: &Tensor, tap: &str, train: bool) -> Vec<(String, Tensor)> {
        let mut out = self.features_t(xs, train);
        if let Some(i) = out.iter().position(|(n, _)| n == tap) {
            out.truncate(i + 1);
        }
        out
    }

    /// Channels of the last feature map (the dimension of pooled features).
    fn out_channels(&self) -> i64;
}

/// Which encoder to build, as it appears in run configs (`{"kind": "nin", "blocks": 4}`).
///
/// Unknown fields are rejected (`{"kind": "nin", "depth": 4}` is an error naming `depth`).
/// Values are checked by [`EncoderConfig::validate`] (also run by [`try_build_encoder`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EncoderConfig {
    /// The tiny conv net for tests: two 3×3 conv + BN + ReLU stages, taps `block1`, `block2`.
    Tiny {
        /// Channels of the first stage (the second has twice as many). Default 8.
        #[serde(default = "tiny::default_width")]
        width: i64,
        /// Batch norm after each conv (default true); without it the convs have biases (a
        /// network whose gradients do not couple the samples of a batch, for the data-parallel
        /// tests).
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        batch_norm: bool,
    },
    /// The RotNet Network-In-Network ([`nin::Nin`]), taps `block1..block{blocks}`.
    Nin {
        /// Number of conv blocks, at least 3 (RotNet uses 3, 4 and 5). Default 4.
        #[serde(default = "nin::default_blocks")]
        blocks: usize,
        /// Channels of the wide layers (192 in RotNet); the 160- and 96-channel layers of
        /// block 1 scale with it (×5/6 and ×1/2, rounded). Default 192.
        #[serde(default = "nin::default_width")]
        width: i64,
    },
    /// AlexNet with BN ([`alexnet::AlexNet`]), taps `conv1..conv5`.
    Alexnet {
        /// `imagenet` (224/227-pixel input) or `cifar` (32-pixel input). Default `imagenet`.
        #[serde(default)]
        variant: AlexnetVariant,
        /// Channels of conv1 (96 in AlexNet); conv2..conv5 scale with it (256, 384, 384, 256
        /// at 96), so 24 is a quarter-width AlexNet with a sixteenth of the multiply-adds.
        /// Default 96.
        #[serde(default = "alexnet::default_width")]
        width: i64,
    },
    /// torchvision ResNet-18 without its fc ([`resnet::ResNet`]), taps `block1..block4`.
    Resnet18 {
        /// `imagenet` (7×7/2 conv + max-pool) or `cifar` (3×3/1 conv, no pool). Default
        /// `imagenet`.
        #[serde(default)]
        stem: ResnetStem,
    },
    /// torchvision ResNet-50 without its fc ([`resnet::ResNet`]), taps `block1..block4`.
    Resnet50 {
        /// `imagenet` (7×7/2 conv + max-pool) or `cifar` (3×3/1 conv, no pool). Default
        /// `imagenet`.
        #[serde(default)]
        stem: ResnetStem,
    },
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig::Tiny { width: tiny::default_width(), batch_norm: true }
    }
}

impl EncoderConfig {
    /// Checks the values (widths positive, NIN blocks at least 3); the error names the field.
    pub fn validate(&self) -> Result<()> {
        match self {
            EncoderConfig::Tiny { width, .. } if *width < 1 => {
                Err(CoreError::Config(format!("encoder.width must be at least 1, got {width}")))
            }
            EncoderConfig::Nin { blocks, width } => nin::check(*blocks, *width),
            EncoderConfig::Alexnet { width, .. } => alexnet::check(*width),
            _ => Ok(()),
        }
    }
}

/// Builds the encoder described by `cfg` on `p` for images with `in_channels` channels,
/// or returns the configuration error (see [`EncoderConfig::validate`]).
pub fn try_build_encoder(
    p: &nn::Path,
    cfg: &EncoderConfig,
    in_channels: i64,
) -> Result<Box<dyn Encoder>> {
    if in_channels < 1 {
        return Err(CoreError::Config(format!(
            "encoder input channels must be at least 1, got {in_channels}"
        )));
    }
    cfg.validate()?;
    Ok(match cfg {
        EncoderConfig::Tiny { width, batch_norm } => {
            Box::new(tiny::Tiny::with_batch_norm(p, in_channels, *width, *batch_norm))
        }
        EncoderConfig::Nin { blocks, width } => {
            Box::new(nin::Nin::new(p, in_channels, *blocks, *width)?)
        }
        EncoderConfig::Alexnet { variant, width } => {
            Box::new(alexnet::AlexNet::with_width(p, in_channels, *variant, *width))
        }
        EncoderConfig::Resnet18 { stem } => {
            Box::new(resnet::ResNet::resnet18(p, in_channels, *stem))
        }
        EncoderConfig::Resnet50 { stem } => {
            Box::new(resnet::ResNet::resnet50(p, in_channels, *stem))
        }
    })
}

/// Builds the encoder described by `cfg` on `p` for images with `in_channels` channels.
///
/// # Panics
/// On a config that [`EncoderConfig::validate`] rejects; validate first (the run config does)
/// or call [`try_build_encoder`].
pub fn build_encoder(p: &nn::Path, cfg: &EncoderConfig, in_channels: i64) -> Box<dyn Encoder> {
    try_build_encoder(p, cfg, in_channels).unwrap_or_else(|e| panic!("{e}"))
}

/// Conv init shared by the encoders here: normal with std `sqrt(2 / (k·k·out_channels))`.
/// That is torchvision's `kaiming_normal_(mode="fan_out", nonlinearity="relu")` and the
/// official RotNet `normal_(0, sqrt(2. / n))` with `n = k·k·out_channels`.
pub(crate) const CONV_INIT: nn::Init = nn::Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

/// A bias-free `k×k` conv with [`CONV_INIT`] (Winograd where [`conv::plan`] takes it, matrix
/// products where [`conv::plan_gemm`] does).
pub(crate) fn conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
) -> Conv2d {
    let cfg =
        nn::ConvConfig { stride, padding, bias: false, ws_init: CONV_INIT, ..Default::default() };
    Conv2d::new(p, c_in, c_out, k, cfg)
}

/// The variable `name` (dotted, relative to `root`, e.g. `encoder.block1.bn.weight`) of the
/// var store `root` belongs to, if it exists. An `nn::Path` cannot list its variables; methods
/// that keep a second copy of a network (MoCo's key network) pair variables by name this way.
pub fn var_at(root: &nn::Path, name: &str) -> Option<Tensor> {
    let mut parts: Vec<&str> = name.split('.').collect();
    let last = parts.pop()?;
    parts.iter().fold(root.clone(), |p, c| p.sub(*c)).get(last)
}

/// Whether a variable name is a batch-norm running statistic (`…running_mean`,
/// `…running_var`).
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// Pushes `(name, t)` onto `out` and says whether `name` is the tap to stop at.
pub(crate) fn push_tap(
    out: &mut Vec<(String, Tensor)>,
    name: &str,
    t: &Tensor,
    stop: Option<&str>,
) -> bool {
    out.push((name.to_string(), t.shallow_clone()));
    stop == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: EncoderConfig = serde_json::from_str(r#"{"kind": "nin"}"#).unwrap();
        assert_eq!(c, EncoderConfig::Nin { blocks: 4, width: 192 });
        let c: EncoderConfig = serde_json::from_str(r#"{"kind": "alexnet"}"#).unwrap();
        assert_eq!(c, EncoderConfig::Alexnet { variant: AlexnetVariant::Imagenet, width: 96 });
        let c: EncoderConfig =
            serde_json::from_str(r#"{"kind": "resnet50", "stem": "cifar"}"#).unwrap();
        assert_eq!(c, EncoderConfig::Resnet50 { stem: ResnetStem::Cifar });
        let c: EncoderConfig = serde_json::from_str(r#"{"kind": "resnet18"}"#).unwrap();
        assert_eq!(c, EncoderConfig::Resnet18 { stem: ResnetStem::Imagenet });
        let e = serde_json::from_str::<EncoderConfig>(r#"{"kind": "nin", "depth": 4}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("depth"), "{e}");
        let e = serde_json::from_str::<EncoderConfig>(r#"{"kind": "alexnet", "variant": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("imagenet") && e.contains("cifar"), "{e}");
        // Round trip through JSON.
        let c = EncoderConfig::Nin { blocks: 5, width: 96 };
        let back: EncoderConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn invalid_configs_are_errors() {
        let vs = nn::VarStore::new(Device::Cpu);
        for cfg in [
            EncoderConfig::Nin { blocks: 2, width: 192 },
            EncoderConfig::Nin { blocks: 4, width: 1 },
            EncoderConfig::Tiny { width: 0, batch_norm: true },
        ] {
            let e = try_build_encoder(&vs.root(), &cfg, 3).unwrap_err().to_string();
            assert!(e.starts_with("config: encoder."), "{e}");
        }
        assert!(try_build_encoder(&vs.root(), &EncoderConfig::default(), 0).is_err());
        assert!(vs.variables().is_empty());
    }

    #[test]
    fn build_encoder_covers_every_kind() {
        let x = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        for (cfg, taps, last) in [
            (EncoderConfig::default(), 2, [1, 16, 16, 16]),
            (EncoderConfig::Nin { blocks: 3, width: 192 }, 3, [1, 192, 8, 8]),
            (
                EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 96 },
                5,
                [1, 256, 8, 8],
            ),
            (
                EncoderConfig::Alexnet { variant: AlexnetVariant::Cifar, width: 24 },
                5,
                [1, 64, 8, 8],
            ),
            (EncoderConfig::Resnet18 { stem: ResnetStem::Cifar }, 4, [1, 512, 4, 4]),
            (EncoderConfig::Resnet50 { stem: ResnetStem::Imagenet }, 4, [1, 2048, 1, 1]),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let enc = build_encoder(&(vs.root() / "encoder"), &cfg, 3);
            assert_eq!(enc.tap_names().len(), taps, "{cfg:?}");
            let y = tch::no_grad(|| enc.forward_t(&x, false));
            assert_eq!(y.size(), last, "{cfg:?}");
            assert_eq!(enc.out_channels(), last[1], "{cfg:?}");
            assert!(vs.variables().keys().all(|k| k.starts_with("encoder.")));
        }
    }
}
