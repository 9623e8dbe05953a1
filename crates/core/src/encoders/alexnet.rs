//! AlexNet as the classic pretext tasks use it: the Caffe AlexNet of Krizhevsky et al. (2012)
//! in the single-tower form of Doersch et al. (context prediction), Noroozi & Favaro (jigsaw)
//! and Zhang et al. (colorization, split-brain): conv1 96 11×11/4, conv2 256 5×5, conv3 384,
//! conv4 384, conv5 256 (3×3), max-pool 3×3/2 after conv1 and conv2, with BatchNorm after
//! every conv as the split-brain and RotNet (gidariss/FeatureLearningRotNet,
//! `architectures/AlexNet.py`) AlexNets have. No grouped convs, no LRN (BN replaces it), no
//! pool5/fc6/fc7: methods add their own heads.
//!
//! Taps are taken after ReLU and **before** pooling, as in the linear-probe tables of Zhang et
//! al. (Caffe's in-place ReLU blobs `conv1`..`conv5`, average-pooled to ~9k dims: conv1
//! 96×55×55 → 10×10, conv2 256×27×27 → 6×6, conv3/conv4 384×13×13 → 5×5, conv5 256×13×13 →
//! 6×6) and in RotNet's code (`out_feat_keys = ['conv1', ..., 'conv5']`, where `pool1` and
//! `pool2` are separate feature blocks). The pooling to ~9k dims is the probe's job.
//!
//! Variants:
//! - `imagenet` (224 or 227-pixel input): conv1 11×11 stride 4 padding 2 (as torchvision and
//!   RotNet), pools 3×3 stride 2 without padding, conv2 padding 2, conv3..5 padding 1. A
//!   227-pixel input gives a 56×56 conv1 map and then the same sizes as 224 from conv2 on.
//! - `cifar` (32-pixel input): conv1 5×5 stride 1 padding 2, pools 3×3 stride 2 padding 1,
//!   everything else as `imagenet`, so conv5 is 8×8 (≥ 2×2) on CIFAR.
//!
//! Convs have no bias (the BN shift that follows makes it redundant); init as the other
//! encoders here: conv weights normal with std `sqrt(2 / (k·k·out_channels))`, BN weight 1 and
//! bias 0. Variables: `conv{i}.weight`, `bn{i}.{weight, bias, running_mean, running_var}`.
//!
//! # Shapes
//! `imagenet`, `(N, 3, 224, 224)`: conv1 `(N, 96, 55, 55)`, conv2 `(N, 256, 27, 27)`, conv3
//! `(N, 384, 13, 13)`, conv4 `(N, 384, 13, 13)`, conv5 `(N, 256, 13, 13)`.
//! `cifar`, `(N, 3, 32, 32)`: conv1 `(N, 96, 32, 32)`, conv2 `(N, 256, 16, 16)`, conv3
//! `(N, 384, 8, 8)`, conv4 `(N, 384, 8, 8)`, conv5 `(N, 256, 8, 8)`.
use super::{batch_norm2d, conv2d, push_tap, BatchNorm, Conv2d, Encoder};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Tensor};

/// Which AlexNet: the ImageNet-sized original or the CIFAR-sized variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlexnetVariant {
    /// 224/227-pixel input: conv1 11×11 stride 4, unpadded 3×3/2 max-pools.
    #[default]
    Imagenet,
    /// 32-pixel input: conv1 5×5 stride 1, padded 3×3/2 max-pools.
    Cifar,
}

/// Output channels of conv1..conv5 at the default width.
pub const CHANNELS: [i64; 5] = [96, 256, 384, 384, 256];

/// The default width: conv1's 96 channels.
pub fn default_width() -> i64 {
    CHANNELS[0]
}

/// Output channels of conv1..conv5 when conv1 has `width`: AlexNet's, scaled by `width / 96`
/// (rounded, at least 1).
pub fn channels(width: i64) -> [i64; 5] {
    CHANNELS.map(|c| ((c * width + CHANNELS[0] / 2) / CHANNELS[0]).max(1))
}

/// Checks the width; the error names the field.
pub fn check(width: i64) -> crate::Result<()> {
    if width < 1 {
        return Err(crate::CoreError::Config(format!(
            "encoder.width must be at least 1, got {width}"
        )));
    }
    Ok(())
}

/// The AlexNet encoder; see the module docs for the layers.
///
/// # Shapes
/// `imagenet` at 224 px: `(N, 96, 55, 55)`, `(N, 256, 27, 27)`, `(N, 384, 13, 13)`,
/// `(N, 384, 13, 13)`, `(N, 256, 13, 13)`; `cifar` at 32 px: `(N, 96, 32, 32)`,
/// `(N, 256, 16, 16)`, then `(N, 384, 8, 8)` twice and `(N, 256, 8, 8)`.
#[derive(Debug)]
pub struct AlexNet {
    layers: Vec<(Conv2d, BatchNorm)>,
    variant: AlexnetVariant,
    out_channels: i64,
}

impl AlexNet {
    /// Builds the full-width AlexNet on `p` for `in_channels`-channel images.
    pub fn new(p: &nn::Path, in_channels: i64, variant: AlexnetVariant) -> Self {
        Self::with_width(p, in_channels, variant, default_width())
    }

    /// Builds it with `width` channels in conv1 and the others scaled ([`channels`]).
    pub fn with_width(p: &nn::Path, in_channels: i64, variant: AlexnetVariant, width: i64) -> Self {
        let widths = channels(width);
        let (k1, s1, p1) = match variant {
            AlexnetVariant::Imagenet => (11, 4, 2),
            AlexnetVariant::Cifar => (5, 1, 2),
        };
        let spec = [(k1, s1, p1), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)];
        let mut c_in = in_channels;
        let layers = spec
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (&(k, s, pad), c_out))| {
                let conv = conv2d(p / format!("conv{}", i + 1), c_in, c_out, k, s, pad);
                let bn = batch_norm2d(p / format!("bn{}", i + 1), c_out);
                c_in = c_out;
                (conv, bn)
            })
            .collect();
        AlexNet { layers, variant, out_channels: widths[4] }
    }

    fn pool(&self, x: &Tensor) -> Tensor {
        let pad = match self.variant {
            AlexnetVariant::Imagenet => 0,
            AlexnetVariant::Cifar => 1,
        };
        crate::ops::max_pool2d(x, 3, 2, pad)
    }

    fn run(&self, xs: &Tensor, train: bool, stop: Option<&str>) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(5);
        let mut x = xs.shallow_clone();
        for (i, (conv, bn)) in self.layers.iter().enumerate() {
            if i == 1 || i == 2 {
                x = self.pool(&x);
            }
            x = bn.forward_relu_t(&x.apply(conv), train);
            if push_tap(&mut out, &format!("conv{}", i + 1), &x, stop) {
                break;
            }
        }
        out
    }
}

impl ModuleT for AlexNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.run(xs, train, None).pop().expect("five taps").1
    }
}

impl Encoder for AlexNet {
    fn tap_names(&self) -> Vec<String> {
        (1..=5).map(|i| format!("conv{i}")).collect()
    }

    fn features_t(&self, xs: &Tensor, train: bool) -> Vec<(String, Tensor)> {
        self.run(xs, train, None)
    }

    fn features_upto_t(&self, xs: &Tensor, tap: &str, train: bool) -> Vec<(String, Tensor)> {
        self.run(xs, train, Some(tap))
    }

    fn out_channels(&self) -> i64 {
        self.out_channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn shapes(variant: AlexnetVariant, side: i64) -> Vec<(String, Vec<i64>)> {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = AlexNet::new(&vs.root(), 3, variant);
        let x = Tensor::randn([1, 3, side, side], (Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| net.features_t(&x, false));
        assert_eq!(f.last().unwrap().1, tch::no_grad(|| net.forward_t(&x, false)));
        assert_eq!(net.tap_names(), f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
        f.into_iter().map(|(n, t)| (n, t.size())).collect()
    }

    fn named(v: &[(&str, [i64; 4])]) -> Vec<(String, Vec<i64>)> {
        v.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
    }

    #[test]
    fn cifar_taps_at_32px() {
        assert_eq!(
            shapes(AlexnetVariant::Cifar, 32),
            named(&[
                ("conv1", [1, 96, 32, 32]),
                ("conv2", [1, 256, 16, 16]),
                ("conv3", [1, 384, 8, 8]),
                ("conv4", [1, 384, 8, 8]),
                ("conv5", [1, 256, 8, 8]),
            ])
        );
    }

    #[test]
    fn imagenet_taps_at_224px() {
        assert_eq!(
            shapes(AlexnetVariant::Imagenet, 224),
            named(&[
                ("conv1", [1, 96, 55, 55]),
                ("conv2", [1, 256, 27, 27]),
                ("conv3", [1, 384, 13, 13]),
                ("conv4", [1, 384, 13, 13]),
                ("conv5", [1, 256, 13, 13]),
            ])
        );
    }

    #[test]
    fn width_scales_every_layer() {
        assert_eq!(channels(96), CHANNELS);
        assert_eq!(channels(24), [24, 64, 96, 96, 64]);
        assert_eq!(channels(1), [1, 3, 4, 4, 3]);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = AlexNet::with_width(&vs.root(), 3, AlexnetVariant::Cifar, 24);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| net.features_t(&x, false));
        let c: Vec<i64> = f.iter().map(|(_, t)| t.size()[1]).collect();
        assert_eq!(c, [24, 64, 96, 96, 64]);
        assert_eq!(net.out_channels(), 64);
        assert!(check(0).unwrap_err().to_string().contains("encoder.width"));
    }

    #[test]
    fn parameters_and_upto() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = AlexNet::new(&vs.root(), 3, AlexnetVariant::Imagenet);
        let n: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        // Caffe AlexNet conv weights without groups or biases, plus BN weight and bias.
        let convs = 96 * 3 * 121 + 256 * 96 * 25 + 384 * 256 * 9 + 384 * 384 * 9 + 256 * 384 * 9;
        let bns = 2 * (96 + 256 + 384 + 384 + 256);
        assert_eq!(n, convs + bns);
        let x = Tensor::randn([1, 3, 227, 227], (Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| net.features_upto_t(&x, "conv2", false));
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].1.size(), [1, 96, 56, 56]);
        assert_eq!(f[1].1.size(), [1, 256, 27, 27]);
    }
}
