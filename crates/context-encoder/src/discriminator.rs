//! The adversarial discriminator of context encoders (Pathak et al., CVPR 2016, section 3.2),
//! as the official code builds it (DCGAN's discriminator, Radford et al. 2016): 4×4
//! convolutions with stride 2 and padding 1, halving the side until it is at most 4, with
//! `width` channels doubling per layer (at most 8×), batch norm after all but the first and
//! LeakyReLU(0.2) after each; then a convolution over the whole remaining map to one logit.
//!
//! It judges whole images: the real image, or the image with the network's prediction pasted
//! into the hole and its border (the paper's centre model shows it only the 64-pixel
//! prediction; its random-mask model the whole output).
//!
//! Its 4×4 stride-2 convolutions are `selfsup_core`'s [`conv_down`]: on the CPU, the backward
//! pass to the weights of the layers from 64 channels on (and their forward pass from 16×16
//! inputs or 256 channels on; with AVX-512, at all of them) by Winograd's F(2×2, 2×2) on the
//! space-to-depth form of the input (in bf16 with AMX, as one matrix product over the batch's
//! im2col columns instead), the rest libtorch's; in deterministic CPU runs, as its last
//! convolution, oneDNN's kernels in fixed pieces of the batch ([`convolution`]). The last
//! convolution, over the whole remaining map, is a matrix-vector product, and runs as one in
//! bf16 with AMX and in fp32 with AVX-512 (`selfsup_core::encoders::conv::plan_gemm`).
//!
//! Its batch norm always uses the batch's statistics and keeps no running ones (PyTorch's
//! `track_running_stats=False`): the discriminator is only ever run on training batches, and
//! so a generator step, which runs it, changes none of its variables.
//!
//! Variables (under the `discriminator.` prefix the method builds it on): `conv{i}.weight`
//! (normal with std 0.02, no bias), `bn{i}.{weight, bias}` for `i ≥ 2` (1 and 0), and
//! `out.weight`.
use selfsup_core::encoders::batch_norm::deterministic_layout;
use selfsup_core::encoders::conv::{conv_down, convolution, Geometry};
use selfsup_reconstruction::decoder::DCGAN_INIT;
use tch::nn;
use tch::Tensor;

/// The DCGAN-style discriminator; see the module docs.
#[derive(Debug)]
pub struct Discriminator {
    convs: Vec<nn::Conv2D>,
    norms: Vec<Option<(Tensor, Tensor)>>,
    out: nn::Conv2D,
}

/// The stride and padding of the 4×4 convolutions that halve the side, those of
/// [`conv_down`] (the last convolution covers the remaining map: stride 1, no padding).
const DOWN_STRIDE: i64 = 2;
const DOWN_PADDING: i64 = 1;

impl Discriminator {
    /// Builds it on `p` for `in_channels × side × side` images.
    pub fn new(p: &nn::Path, in_channels: i64, side: i64, width: i64) -> Self {
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        let (mut s, mut c_in) = (side, in_channels);
        let down = nn::ConvConfig {
            stride: DOWN_STRIDE,
            padding: DOWN_PADDING,
            bias: false,
            ws_init: DCGAN_INIT,
            ..Default::default()
        };
        while s > 4 {
            let i = convs.len();
            let c_out = width * (1i64 << i.min(3));
            convs.push(nn::conv2d(p / format!("conv{}", i + 1), c_in, c_out, 4, down));
            norms.push((i > 0).then(|| {
                let bn = p / format!("bn{}", i + 1);
                (bn.var("weight", &[c_out], nn::Init::Const(1.0)), bn.zeros("bias", &[c_out]))
            }));
            c_in = c_out;
            s /= 2;
        }
        let last = nn::ConvConfig { bias: false, ws_init: DCGAN_INIT, ..Default::default() };
        let out = nn::conv2d(p / "out", c_in, 1, s.max(1), last);
        Discriminator { convs, norms, out }
    }

    /// The logit of "real" for each image.
    ///
    /// # Shapes
    /// `x`: `(N, C, side, side)`; returns `(N,)`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.run(x, false)
    }

    /// The same logits with the discriminator's variables held constant: a backward pass
    /// from them reaches `x` but computes no gradient for the discriminator. The generator's
    /// step scores its fake with this: the gradients it would leave on the discriminator are
    /// zeroed before the discriminator's own step, and computing them was a third of the
    /// discriminator's weight-gradient work (pix2pix's `set_requires_grad(netD, False)`).
    ///
    /// # Shapes
    /// As [`Discriminator::forward`].
    pub fn forward_frozen(&self, x: &Tensor) -> Tensor {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, frozen: bool) -> Tensor {
        let var = |t: &Tensor| if frozen { t.detach() } else { t.shallow_clone() };
        let mut h = x.shallow_clone();
        for (c, norm) in self.convs.iter().zip(&self.norms) {
            // `nn::Conv2D`'s forward (the config of `new`) with the weight through `var`, by
            // Winograd on the CPU in the passes where that is faster (`plan_down`).
            h = conv_down(&h, &var(&c.ws));
            if let Some((w, b)) = norm {
                // Channels-last in a deterministic CPU run: as NCHW (`deterministic_layout`).
                h = deterministic_layout(&h, true, |h| {
                    h.batch_norm(
                        Some(var(w)),
                        Some(var(b)),
                        None::<Tensor>,
                        None::<Tensor>,
                        true,
                        0.1,
                        1e-5,
                        false,
                    )
                });
            }
            // In place, as the reference's `nn.LeakyReLU(0.2, inplace=True)`: neither the
            // convolution's nor the batch norm's backward pass reads its output.
            selfsup_core::ops::leaky_relu_(&mut h, 0.2);
        }
        let n = x.size()[0];
        convolution(&h, &var(&self.out.ws), None, Geometry::conv(1, 0)).reshape([n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn layers_halve_the_side_down_to_four() {
        let vs = nn::VarStore::new(Device::Cpu);
        let d = Discriminator::new(&(vs.root() / "discriminator"), 3, 32, 8);
        assert_eq!(d.convs.len(), 3, "32 -> 16 -> 8 -> 4");
        let vars = vs.variables();
        assert_eq!(vars["discriminator.conv3.weight"].size(), [32, 16, 4, 4]);
        assert_eq!(vars["discriminator.out.weight"].size(), [1, 32, 4, 4]);
        assert!(!vars.contains_key("discriminator.bn1.weight"));
        assert!(vars.keys().all(|k| !k.contains("running")), "no running statistics");
        let x = Tensor::randn([5, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(d.forward(&x).size(), [5]);
        let odd = Discriminator::new(&vs.root(), 3, 227, 2);
        assert_eq!(odd.convs.len(), 6, "227 -> 113 -> 56 -> 28 -> 14 -> 7 -> 3");
        let x = Tensor::randn([2, 3, 227, 227], (Kind::Float, Device::Cpu));
        assert_eq!(odd.forward(&x).size(), [2]);
    }

    #[test]
    fn the_frozen_pass_gives_the_input_its_gradient_and_the_variables_none() {
        let vs = nn::VarStore::new(Device::Cpu);
        let d = Discriminator::new(&vs.root(), 3, 16, 4);
        let x = Tensor::randn([6, 3, 16, 16], (Kind::Float, Device::Cpu));
        let (a, b) = (x.copy().set_requires_grad(true), x.copy().set_requires_grad(true));
        let frozen = d.forward_frozen(&b);
        frozen.square().sum(Kind::Float).backward();
        for (name, v) in vs.variables() {
            assert!(!v.grad().defined(), "the frozen pass left a gradient on {name}");
        }
        let plain = d.forward(&a);
        plain.square().sum(Kind::Float).backward();
        assert!(frozen.equal(&plain), "the same logits");
        assert!(b.grad().equal(&a.grad()), "the same gradient for the input");
        for (name, v) in vs.variables() {
            assert!(v.grad().defined(), "the plain pass left no gradient on {name}");
        }
    }
}
