//! A tiny conv net for tests: fast enough to train a few steps in a unit test.
//!
//! `block1`: conv3×3(in→w) + BN + ReLU + max-pool 2, `(N, w, H/2, W/2)`;
//! `block2`: conv3×3(w→2w) + BN + ReLU, `(N, 2w, H/2, W/2)`.
//!
//! Without batch norm ([`Tiny::with_batch_norm`]) the convs have biases instead, and no sample's
//! gradient depends on the rest of its batch (what the data-parallel tests need). The convs are
//! libtorch's ([`Conv2d::head`]: on oneDNN's pieces in deterministic CPU runs).
use super::conv::Conv2d;
use super::{batch_norm2d, BatchNorm, Encoder};
use tch::{nn, nn::ModuleT, Tensor};

/// Default width of the first stage.
pub fn default_width() -> i64 {
    8
}

/// The tiny encoder.
#[derive(Debug)]
pub struct Tiny {
    conv1: Conv2d,
    bn1: Option<BatchNorm>,
    conv2: Conv2d,
    bn2: Option<BatchNorm>,
    width: i64,
}

impl Tiny {
    /// Builds it on `p` (variables `conv1`, `bn1`, `conv2`, `bn2`).
    pub fn new(p: &nn::Path, in_channels: i64, width: i64) -> Self {
        Self::with_batch_norm(p, in_channels, width, true)
    }

    /// Builds it with or without batch norm (without: variables `conv1`, `conv2`, with biases).
    pub fn with_batch_norm(p: &nn::Path, in_channels: i64, width: i64, batch_norm: bool) -> Self {
        let c = nn::ConvConfig { padding: 1, bias: !batch_norm, ..Default::default() };
        Tiny {
            conv1: Conv2d::head(p / "conv1", in_channels, width, 3, c),
            bn1: batch_norm.then(|| batch_norm2d(p / "bn1", width)),
            conv2: Conv2d::head(p / "conv2", width, 2 * width, 3, c),
            bn2: batch_norm.then(|| batch_norm2d(p / "bn2", 2 * width)),
            width,
        }
    }
}

impl ModuleT for Tiny {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.features_t(xs, train).pop().expect("two taps").1
    }
}

impl Encoder for Tiny {
    fn tap_names(&self) -> Vec<String> {
        vec!["block1".into(), "block2".into()]
    }

    fn features_t(&self, xs: &Tensor, train: bool) -> Vec<(String, Tensor)> {
        let norm = |x: Tensor, bn: &Option<BatchNorm>| match bn {
            Some(bn) => x.apply_t(bn, train),
            None => x,
        };
        let b1 = norm(xs.apply(&self.conv1), &self.bn1).relu().max_pool2d_default(2);
        let b2 = norm(b1.apply(&self.conv2), &self.bn2).relu();
        vec![("block1".into(), b1), ("block2".into(), b2)]
    }

    fn out_channels(&self) -> i64 {
        2 * self.width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_shapes() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Tiny::new(&vs.root(), 3, 8);
        let x = Tensor::zeros([2, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
        let f = net.features_t(&x, false);
        assert_eq!(f[0].0, "block1");
        assert_eq!(f[0].1.size(), [2, 8, 16, 16]);
        assert_eq!(f[1].1.size(), [2, 16, 16, 16]);
        assert_eq!(net.forward_t(&x, false).size(), [2, 16, 16, 16]);
    }

    #[test]
    fn without_batch_norm_the_convs_have_biases_and_samples_are_independent() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Tiny::with_batch_norm(&vs.root(), 3, 4, false);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names, ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight"]);
        let x = Tensor::randn([4, 3, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
        let whole = net.forward_t(&x, true);
        let first = net.forward_t(&x.narrow(0, 0, 2), true);
        assert!(whole.narrow(0, 0, 2).allclose(&first, 1e-6, 1e-6, false));
    }
}
