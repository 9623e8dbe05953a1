//! The up-convolution decoder of the reconstruction methods: from the trunk's last feature map
//! back to the image, as the decoder of context encoders (Pathak et al., CVPR 2016, section 3.1:
//! "a series of five up-convolutional layers with learned filters, each with a rectified
//! linear unit activation"; the official code is DCGAN's generator: `SpatialFullConvolution`
//! 4×4 stride 2 + BN + ReLU) and, with the trunk as encoder, the decoder of the denoising
//! autoencoder (Vincent et al., ICML 2008, here convolutional).
//!
//! Layers: `ups` blocks of a 4×4 transposed convolution with stride 2 and padding 1 (doubling
//! the side), BN and ReLU, with `width` output channels in the first and half as many in each
//! next (at least [`MIN_CHANNELS`]); a bilinear resize to the exact image size where the
//! doublings do not land on it; a 3×3 convolution to the image channels, with bias and no
//! activation (the targets are normalised pixels, not `[-1, 1]` as under the paper's tanh).
//! Weights as the official code: normal with std 0.02, BN weight 1 and bias 0. The convolutions
//! are `selfsup_core`'s [`ConvTranspose2d`] and [`Conv2d::head`]: libtorch's, on oneDNN's kernels
//! in fixed pieces of the batch in deterministic CPU runs.
//!
//! Variables: `up{i}.weight`, `bn{i}.{weight, bias, running_mean, running_var}` for `i` in
//! `1..=ups`, `out.{weight, bias}`.
use selfsup_core::encoders::conv::{Conv2d, ConvTranspose2d};
use selfsup_core::encoders::{batch_norm2d, BatchNorm};
use tch::nn;
use tch::Tensor;

/// The fewest channels a decoder block is given.
pub const MIN_CHANNELS: i64 = 8;

/// DCGAN's weight init, `normal(0, 0.02)`.
pub const DCGAN_INIT: nn::Init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };

/// The up-convolution decoder; see the module docs.
#[derive(Debug)]
pub struct UpDecoder {
    ups: Vec<(ConvTranspose2d, BatchNorm)>,
    out: Conv2d,
    channels: Vec<i64>,
}

impl UpDecoder {
    /// The default width of the first block for an `in_channels` feature map: half of it, at
    /// least [`MIN_CHANNELS`].
    pub fn default_width(in_channels: i64) -> i64 {
        (in_channels / 2).max(MIN_CHANNELS)
    }

    /// The number of doublings from a `feature_side` map to an `image_side` image: the nearest
    /// whole `log2(image_side / feature_side)`, at least 0 (AlexNet's 8×8 `cifar` conv5 to 32
    /// pixels: 2; its 13×13 `imagenet` conv5 to 227 pixels: 4, then a resize from 208).
    pub fn ups_for(feature_side: i64, image_side: i64) -> usize {
        let ratio = image_side as f64 / feature_side.max(1) as f64;
        ratio.log2().round().max(0.0) as usize
    }

    /// Builds it on `p`: `ups` blocks from `in_channels`, the first with `width` channels, and
    /// the output convolution to `out_channels`.
    pub fn new(p: &nn::Path, in_channels: i64, out_channels: i64, width: i64, ups: usize) -> Self {
        let mut c_in = in_channels;
        let mut blocks = Vec::with_capacity(ups);
        let mut channels = Vec::with_capacity(ups);
        for i in 0..ups {
            let c_out = (width >> i).max(MIN_CHANNELS);
            let cfg = nn::ConvTransposeConfig {
                stride: 2,
                padding: 1,
                bias: false,
                ws_init: DCGAN_INIT,
                ..Default::default()
            };
            let up = ConvTranspose2d::new(p / format!("up{}", i + 1), c_in, c_out, 4, cfg);
            let bn = batch_norm2d(p / format!("bn{}", i + 1), c_out);
            blocks.push((up, bn));
            channels.push(c_out);
            c_in = c_out;
        }
        let cfg = nn::ConvConfig {
            padding: 1,
            ws_init: DCGAN_INIT,
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let out = Conv2d::head(p / "out", c_in, out_channels, 3, cfg);
        UpDecoder { ups: blocks, out, channels }
    }

    /// Output channels of the blocks, in order.
    pub fn block_channels(&self) -> &[i64] {
        &self.channels
    }

    /// Decodes a feature map into an image of `size = [H, W]`.
    ///
    /// # Shapes
    /// `x`: `(N, C_in, h, w)`; returns `(N, out_channels, H, W)`.
    pub fn forward_t(&self, x: &Tensor, size: [i64; 2], train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (up, bn) in &self.ups {
            h = bn.forward_relu_t(&h.apply(up), train);
        }
        let s = h.size();
        if s[2] != size[0] || s[3] != size[1] {
            h = h.upsample_bilinear2d(size, false, None, None);
        }
        h.apply(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn doublings_and_shapes() {
        assert_eq!(UpDecoder::ups_for(8, 32), 2);
        assert_eq!(UpDecoder::ups_for(16, 32), 1);
        assert_eq!(UpDecoder::ups_for(13, 227), 4);
        assert_eq!(UpDecoder::ups_for(32, 32), 0);
        assert_eq!(UpDecoder::ups_for(4, 128), 5);
        assert_eq!(UpDecoder::default_width(256), 128);
        assert_eq!(UpDecoder::default_width(11), 8);
        let vs = nn::VarStore::new(Device::Cpu);
        let d = UpDecoder::new(&(vs.root() / "decoder"), 64, 3, 32, 3);
        assert_eq!(d.block_channels(), [32, 16, 8]);
        let x = Tensor::randn([2, 64, 4, 4], (Kind::Float, Device::Cpu));
        assert_eq!(d.forward_t(&x, [32, 32], true).size(), [2, 3, 32, 32]);
        // A size the doublings miss is reached by the resize.
        assert_eq!(d.forward_t(&x, [30, 34], false).size(), [2, 3, 30, 34]);
        let vars = vs.variables();
        assert_eq!(vars["decoder.up1.weight"].size(), [64, 32, 4, 4]);
        assert_eq!(vars["decoder.out.weight"].size(), [3, 8, 3, 3]);
        assert!(vars.keys().all(|k| k.starts_with("decoder.")));
    }

    #[test]
    fn gradients_reach_every_layer() {
        let vs = nn::VarStore::new(Device::Cpu);
        let d = UpDecoder::new(&vs.root(), 8, 1, 8, 2);
        let x = Tensor::randn([2, 8, 4, 4], (Kind::Float, Device::Cpu));
        d.forward_t(&x, [16, 16], true).square().mean(Kind::Float).backward();
        for (name, t) in vs.variables() {
            if t.requires_grad() {
                let g = t.grad();
                assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}");
            }
        }
    }
}
