//! The channel-wise fully connected layer of context encoders (Pathak et al., CVPR 2016,
//! section 3.1): "a fully-connected layer with groups, ... each group for one channel", which
//! connects every position of a feature map to every other within a channel (so the decoder
//! can reason about the whole image) with `C·(hw)²` weights instead of a full layer's
//! `(C·hw)²`, "followed by a stride 1 convolution to propagate information across channels".
//! Here each is followed by a ReLU.
//!
//! Variables: `weight` `(C, hw, hw)` and `bias` `(C, hw)`, uniform in `±1/√(hw)` as PyTorch's
//! `nn.Linear`; `mix.{weight, bias}`, the 1×1 convolution.
use selfsup_core::encoders::batched_product;
use selfsup_core::encoders::conv::Conv2d;
use tch::nn;
use tch::Tensor;

/// The channel-wise fully connected layer and the 1×1 convolution after it.
#[derive(Debug)]
pub struct ChannelwiseFc {
    weight: Tensor,
    bias: Tensor,
    mix: Conv2d,
    shape: [i64; 3],
}

impl ChannelwiseFc {
    /// Builds it on `p` for `(C, h, w)` feature maps, `shape = [C, h, w]`.
    pub fn new(p: &nn::Path, shape: [i64; 3]) -> Self {
        let [c, h, w] = shape;
        let hw = h * w;
        let bound = 1.0 / (hw as f64).sqrt();
        let init = nn::Init::Uniform { lo: -bound, up: bound };
        let weight = p.var("weight", &[c, hw, hw], init);
        let bias = p.var("bias", &[c, hw], init);
        let mix = Conv2d::head(p / "mix", c, c, 1, Default::default());
        ChannelwiseFc { weight, bias, mix, shape }
    }

    /// # Shapes
    /// `x`: `(N, C, h, w)`; returns `(N, C, h, w)`: position `q` of channel `c` is
    /// `relu(Σ_p x[c, p] · weight[c, p, q] + bias[c, q])`, then the 1×1 convolution and ReLU.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let [c, h, w] = self.shape;
        let n = x.size()[0];
        // One `(N, hw)·(hw, hw)` product per channel. (The broadcast `(N, C, 1, hw)` by
        // `(C, hw, hw)` matmul copies the weight N times, multiplies N·C vectors, and sums N
        // copies of the weight's gradient.) In a deterministic CPU run, one single-threaded
        // product a channel (`batched_product`): the same bits at any thread count.
        let y = batched_product(&x.reshape([n, c, h * w]).transpose(0, 1), &self.weight);
        let y = y.transpose(0, 1);
        let y = (y + &self.bias).relu().reshape([n, c, h, w]);
        y.apply(&self.mix).relu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn channels_do_not_mix_before_the_1x1_convolution() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut fc = ChannelwiseFc::new(&vs.root(), [2, 3, 3]);
        assert_eq!(vs.variables()["weight"].size(), [2, 9, 9]);
        // The 1x1 convolution as the identity, so that its ReLU cannot zero every output
        // (and the gradients compared below) whatever the random init.
        tch::no_grad(|| {
            fc.mix.inner.ws.copy_(&Tensor::eye(2, (Kind::Float, Device::Cpu)).view([2, 2, 1, 1]));
            if let Some(b) = &mut fc.mix.inner.bs {
                let _ = b.zero_();
            }
        });
        // The grouped product equals one fully connected layer per channel.
        let x = Tensor::randn([4, 2, 3, 3], (Kind::Float, Device::Cpu));
        let per_channel = |c: i64| {
            (x.select(1, c).reshape([4, 9]).matmul(&fc.weight.get(c)) + fc.bias.get(c)).relu()
        };
        let want = Tensor::stack(&[per_channel(0), per_channel(1)], 1).reshape([4, 2, 3, 3]);
        let want = want.apply(&fc.mix).relu();
        let got = fc.forward(&x);
        assert!(got.allclose(&want, 1e-6, 1e-6, false));
        // And the same gradient for the weight.
        let grad = |y: Tensor| {
            let mut w = fc.weight.shallow_clone();
            w.zero_grad();
            y.square().sum(Kind::Float).backward();
            w.grad().copy()
        };
        let (got, want) = (grad(got), grad(want));
        assert!(got.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(got.allclose(&want, 1e-5, 1e-6, false));
        // Before the ReLU, an output position depends on every input position of its channel
        // and on no other channel.
        let x = x.set_requires_grad(true);
        let y = x.reshape([4, 2, 1, 9]).matmul(&fc.weight);
        y.get(0).get(0).get(0).get(4).backward();
        let g = x.grad().get(0);
        assert!(g.get(0).ne(0.0).all().int64_value(&[]) == 1, "all of channel 0");
        assert_eq!(g.get(1).abs().sum(Kind::Float).double_value(&[]), 0.0, "none of channel 1");
    }
}
